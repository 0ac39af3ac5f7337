//! CSRF protection through the layer: the refusal's shape for HTTP and
//! gRPC clients, form tokens read by `CsrfForm`, strict mode's form rule,
//! and a token minted in the very request that rotates the credential.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use session_trail::store::MemoryStore;
use session_trail::{Csrf, CsrfForm, Key, Session, SessionLayer};
use tower::ServiceExt;

#[derive(Deserialize)]
struct Comment {
    text: String,
}

fn app(csrf: Csrf) -> Router {
    let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
        .cookie_secure(false)
        .csrf(csrf)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/token",
            get(|s: Session| async move { s.csrf_token().await }),
        )
        .route(
            "/data",
            get(|s: Session| async move {
                let comment: Option<String> = s.get("comment").await?;
                let raw: Option<bool> = s.get("raw").await?;
                Ok::<_, session_trail::Error>(axum::Json(json!({"comment": comment, "raw": raw})))
            }),
        )
        .route(
            "/comment",
            post(|s: Session, CsrfForm(c): CsrfForm<Comment>| async move {
                s.insert("comment", c.text).await?;
                Ok::<_, session_trail::Error>("ok")
            }),
        )
        .route(
            "/raw",
            post(|s: Session| async move {
                s.insert("raw", true).await?;
                Ok::<_, session_trail::Error>("ok")
            }),
        )
        .route(
            "/login-and-token",
            post(|s: Session| async move {
                s.set_user(Some("alice".into())).await?;
                s.csrf_token().await
            }),
        )
        .layer(layer)
}

struct Client {
    app: Router,
    cookie: Option<String>,
}

impl Client {
    fn new(app: Router) -> Self {
        Self { app, cookie: None }
    }

    async fn send(&mut self, req: http::request::Builder, body: Body) -> Response<Body> {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", format!("session={c}")),
            None => req,
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        if let Some(v) = common::app::session_cookie(&res, "session") {
            self.cookie = (!v.is_empty()).then_some(v);
        }
        res
    }

    async fn text(&mut self, method: &str, uri: &str) -> String {
        let res = self
            .send(Request::builder().method(method).uri(uri), Body::empty())
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{method} {uri}");
        text(res).await
    }

    async fn form(&mut self, uri: &str, form: &str) -> Response<Body> {
        self.send(
            Request::builder()
                .method("POST")
                .uri(uri)
                .header("content-type", "application/x-www-form-urlencoded"),
            Body::from(form.to_owned()),
        )
        .await
    }
}

async fn text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn json_body(res: Response<Body>) -> Value {
    serde_json::from_str(&text(res).await).unwrap()
}

#[tokio::test]
async fn a_refusal_is_a_403_json_error_or_a_grpc_permission_denied() {
    let mut c = Client::new(app(Csrf::new()));
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/raw")
                .header("sec-fetch-site", "cross-site"),
            Body::empty(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(
        json_body(res).await,
        json!({"error": "cross-site request refused"})
    );
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/raw")
                .header("content-type", "application/grpc")
                .header("sec-fetch-site", "cross-site"),
            Body::empty(),
        )
        .await;
    assert_eq!(res.headers()["grpc-status"], "7", "PERMISSION_DENIED");
    // Safe methods are never refused.
    let res = c
        .send(
            Request::builder()
                .uri("/data")
                .header("sec-fetch-site", "cross-site"),
            Body::empty(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_form_token_is_read_by_csrf_form_and_a_bad_one_is_refused() {
    let mut c = Client::new(app(Csrf::new()));
    let token = c.text("GET", "/token").await;
    let res = c
        .form(
            "/comment",
            &format!("text=hi&csrf_token={}", common::form_value(&token)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for bad in [
        String::new(),
        "text=nope".to_owned(),
        format!(
            "text=nope&csrf_token={}",
            common::form_value(&token[..token.len() - 2])
        ),
        "text=nope&csrf_token=garbage".to_owned(),
    ] {
        let res = c.form("/comment", &bad).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{bad}");
    }
    // Another session's token is refused too.
    let mut other = Client::new(c.app.clone());
    let theirs = other.text("GET", "/token").await;
    let res = c
        .form(
            "/comment",
            &format!("text=nope&csrf_token={}", common::form_value(&theirs)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let data: Value = serde_json::from_str(&c.text("GET", "/data").await).unwrap();
    assert_eq!(data["comment"], "hi", "no refused form had an effect");
    // Not a form at all.
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/comment")
                .header("content-type", "application/json"),
            Body::from("{}"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn strict_mode_reads_a_forms_token_before_the_handler_runs() {
    let mut c = Client::new(app(Csrf::new().strict(true)));
    let token = c.text("GET", "/token").await;
    // A JSON (non-form) request of the session without the header.
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/raw")
                .header("content-type", "application/json"),
            Body::from("{}"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A form without the field, or with a bad one, to a handler that never
    // looks at it: refused before the handler runs.
    for form in [
        "x=1".to_owned(),
        format!("x=1&csrf_token={}", common::form_value(&token[1..])),
    ] {
        let res = c.form("/raw", &form).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{form}");
    }
    // A multipart form must carry the header.
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/raw")
                .header("content-type", "multipart/form-data; boundary=b"),
            Body::from(format!(
                "--b\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{token}\r\n--b--\r\n"
            )),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let data: Value = serde_json::from_str(&c.text("GET", "/data").await).unwrap();
    assert_eq!(
        data["raw"],
        Value::Null,
        "nothing refused had an effect: {data}"
    );
    // With the field, the handler runs on the same bytes and is saved.
    let res = c
        .form(
            "/raw",
            &format!("x=1&csrf_token={}", common::form_value(&token)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = c
        .form(
            "/comment",
            &format!("text=strict&csrf_token={}", common::form_value(&token)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let data: Value = serde_json::from_str(&c.text("GET", "/data").await).unwrap();
    assert_eq!(data, json!({"comment": "strict", "raw": true}));
    // With the header, any body.
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/raw")
                .header("x-csrf-token", &token),
            Body::empty(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A client without a session has nothing to protect: it passes.
    let mut fresh = Client::new(c.app.clone());
    let res = fresh
        .send(Request::builder().method("POST").uri("/raw"), Body::empty())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_minted_by_the_request_that_rotates_belongs_to_the_new_credential() {
    let mut c = Client::new(app(Csrf::new().strict(true)));
    let before = c.text("GET", "/token").await;
    let old_cookie = c.cookie.clone();
    let res = c
        .send(
            Request::builder()
                .method("POST")
                .uri("/login-and-token")
                .header("x-csrf-token", &before),
            Body::empty(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = text(res).await;
    assert_ne!(c.cookie, old_cookie, "the login rotated the credential");
    let post = |token: String| {
        Request::builder()
            .method("POST")
            .uri("/raw")
            .header("x-csrf-token", token)
    };
    assert_eq!(
        c.send(post(after), Body::empty()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        c.send(post(before), Body::empty()).await.status(),
        StatusCode::FORBIDDEN,
        "the token of the replaced credential"
    );
}

#[tokio::test]
async fn strict_mode_asks_no_token_of_a_credential_sent_in_the_header() {
    let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
        .cookie_secure(false)
        .header("x-session")
        .csrf(Csrf::new().strict(true))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/visit",
            post(|s: Session| async move {
                let n: u64 = s.get("n").await?.unwrap_or(0) + 1;
                s.insert("n", n).await?;
                Ok::<_, session_trail::Error>(n.to_string())
            }),
        )
        .layer(layer);
    let call = |credential: Option<String>, cookie: bool| {
        let app = app.clone();
        async move {
            let mut req = Request::builder().method("POST").uri("/visit");
            req = match (credential, cookie) {
                (Some(c), true) => req.header("cookie", format!("session={c}")),
                (Some(c), false) => req.header("x-session", c),
                (None, _) => req.header("x-session", ""),
            };
            app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
        }
    };
    let first = call(None, false).await;
    let credential = first.headers()["x-session"].to_str().unwrap().to_owned();
    // An API client sends its credential in the header: no browser attaches
    // it on its own, so strict mode asks for no token.
    let res = call(Some(credential.clone()), false).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "2");
    // The same credential in a cookie must come with a token.
    let res = call(Some(credential), true).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}
