//! A small axum app over the session layer, and a client that keeps the
//! session cookie, for the integration tests.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use session_trail::{Session, SessionLayer};
use tower::ServiceExt;

pub async fn visits(session: Session) -> Result<Json<Value>, session_trail::Error> {
    let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", n).await?;
    Ok(Json(json!({ "visits": n })))
}

pub async fn me(session: Option<Session>) -> Result<Json<Value>, StatusCode> {
    let Some(s) = session else {
        return Ok(Json(json!({ "anonymous": true })));
    };
    let e = |_| StatusCode::SERVICE_UNAVAILABLE;
    Ok(Json(json!({
        "anonymous": false,
        "user": s.user().await.map_err(e)?,
        "privilege": s.privilege().await.map_err(e)?,
        "visits": s.get::<u64>("visits").await.map_err(e)?,
        "session": s.id().await.map_err(e)?,
    })))
}

pub fn router(layer: SessionLayer) -> Router {
    router_with(layer, Router::new())
}

/// [`router`] with more routes, inside the same layer.
pub fn router_with(layer: SessionLayer, extra: Router) -> Router {
    extra
        .route("/visits", get(visits))
        .route("/ping", get(|| async { "pong" }))
        .route("/me", get(me))
        .route(
            "/login/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session.set_user(Some(user)).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/elevate",
            post(|session: Session| async move {
                session.set_privilege(Some("admin".into())).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/regenerate",
            post(|session: Session| async move {
                session.regenerate().await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move {
                session.destroy().await?;
                Ok::<_, session_trail::Error>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/set/{key}/{value}",
            post(
                |session: Session, Path((k, v)): Path<(String, String)>| async move {
                    session.insert(&k, v).await?;
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                },
            ),
        )
        .route(
            "/slow-set/{key}/{value}",
            post(
                |session: Session, Path((k, v)): Path<(String, String)>| async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    session.insert(&k, v).await?;
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                },
            ),
        )
        .route(
            "/event/{name}",
            post(
                |session: Session, Path(name): Path<String>, Json(data): Json<Value>| async move {
                    session.record(&name, data).await?;
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                },
            ),
        )
        .route(
            "/history",
            get(|session: Session| async move {
                Ok::<_, session_trail::Error>(Json(session.history(100).await?.to_json()))
            })
            .delete(|session: Session| async move {
                let receipt = session.erase_history().await?;
                Ok::<_, session_trail::Error>(Json(serde_json::to_value(receipt).unwrap()))
            }),
        )
        .route(
            "/sessions",
            get(|session: Session| async move {
                let list = session.sessions().await?;
                Ok::<_, session_trail::Error>(Json(Value::Array(
                    list.iter().map(|s| s.to_json()).collect(),
                )))
            }),
        )
        .route(
            "/sessions/{id}",
            axum::routing::delete(|session: Session, Path(id): Path<String>| async move {
                let id = id.parse().map_err(|_| {
                    session_trail::Error::new(session_trail::ErrorKind::NotFound, "no such session")
                })?;
                session.revoke(id).await?;
                Ok::<_, session_trail::Error>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/revoke-others",
            post(|session: Session| async move {
                Ok::<_, session_trail::Error>(Json(
                    json!({"revoked": session.revoke_others().await?}),
                ))
            }),
        )
        .route(
            "/export",
            get(|session: Session| async move {
                let stream = session.export().await?;
                Ok::<_, session_trail::Error>(
                    http::Response::builder()
                        .header("content-type", "application/x-ndjson")
                        .body(Body::from_stream(stream))
                        .unwrap(),
                )
            }),
        )
        .layer(layer)
}

/// A client with a cookie jar of one cookie.
pub struct Client {
    pub app: Router,
    pub cookie: Option<String>,
    pub cookie_name: String,
    pub user_agent: Option<String>,
}

impl Client {
    pub fn new(app: Router) -> Self {
        Self {
            app,
            cookie: None,
            cookie_name: "session".into(),
            user_agent: None,
        }
    }

    /// Another client of the same app holding the same cookie.
    pub fn fork(&self) -> Self {
        Self {
            app: self.app.clone(),
            cookie: self.cookie.clone(),
            cookie_name: self.cookie_name.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    pub async fn text(&mut self, method: &str, uri: &str) -> String {
        let res = self.send(method, uri).await;
        assert!(
            res.status().is_success(),
            "{method} {uri}: {}",
            res.status()
        );
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    pub async fn send(&mut self, method: &str, uri: &str) -> Response<Body> {
        self.send_body(method, uri, None).await
    }

    pub async fn send_body(
        &mut self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> Response<Body> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ua) = &self.user_agent {
            req = req.header("user-agent", ua);
        }
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("{}={c}", self.cookie_name));
        }
        let req = match body {
            Some(v) => req
                .header("content-type", "application/json")
                .body(Body::from(v.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        if let Some(v) = session_cookie(&res, &self.cookie_name) {
            self.cookie = if v.is_empty() { None } else { Some(v) };
        }
        res
    }

    pub async fn json(&mut self, method: &str, uri: &str) -> Value {
        let res = self.send(method, uri).await;
        assert!(
            res.status().is_success(),
            "{method} {uri}: {}",
            res.status()
        );
        body_json(res).await
    }
}

/// The value of the session cookie set by a response, if any.
pub fn session_cookie(res: &Response<Body>, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| cookie::Cookie::parse(v.to_owned()).ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

pub async fn body_json(res: Response<Body>) -> Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Polls `f` until it returns `Some`, failing after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sessions at each step of a funnel answer
/// (`{"steps": [{"event", "sessions"}, …]}`).
pub fn funnel_sessions(v: &Value) -> Vec<u64> {
    v["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("not a funnel: {v}"))
        .iter()
        .map(|s| s["sessions"].as_u64().unwrap())
        .collect()
}
