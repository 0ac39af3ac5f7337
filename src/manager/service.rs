use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_service::Service;

use super::Shared;
use super::future::Answered;
use super::future::{Ctx, ResponseFuture};
use crate::csrf::Verdict;
use crate::history::entry::Route;
use crate::session::{RequestMeta, Session};
use crate::transport;

/// The service made by [`SessionLayer`](super::SessionLayer).
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> SessionService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: crate::ErrorBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let read = transport::read(&shared, req.headers());
        let meta = RequestMeta {
            user_agent: read.user_agent,
            client_ip: transport::client_ip(&shared.config.client_address, &req),
            started_ms: crate::util::now_ms(),
        };
        let mut verdict = Verdict::Pass;
        if let Some(csrf) = &shared.config.csrf
            && crate::csrf::is_unsafe(req.method())
        {
            let presented = read.presented.as_ref().map(|p| {
                (
                    &shared.ring,
                    &p.credential.sid,
                    p.credential.token.as_bytes(),
                )
            });
            verdict = csrf.check(
                req.uri(),
                req.headers(),
                presented,
                read.presented_by_cookie,
            );
        }
        let grpc = read.grpc;
        let session = Session::new(Arc::clone(&shared), read.presented, meta);
        if let Verdict::Refuse(check) = verdict {
            // Refused before the handler: the inner service is not called.
            let res = refuse(&session, check, grpc);
            return ResponseFuture::refused(Box::pin(std::future::ready(res)));
        }
        req.extensions_mut().insert(session.clone());
        let (route, matched) = route_of(&shared, &req);
        let ctx = Ctx {
            method: req.method().clone(),
            route,
            matched,
            grpc,
            used_cookie: read.used_cookie,
            used_header: read.used_header,
            start: Instant::now(),
            session: session.clone(),
            shared,
        };
        if verdict == Verdict::FormPending {
            // Strict mode, a form without the header token: its field is
            // verified before the inner service is called. The instance
            // made ready by `poll_ready` is the one called, once the form
            // is read; a clone takes its place here.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::deferred(Box::pin(verify_form(inner, req, session, grpc)), ctx);
        }
        // The inner service was made ready by `poll_ready`; call it here so
        // the instance made ready is the one called.
        ResponseFuture::new(self.inner.call(req), ctx)
    }
}

/// The answer to a refused cross-site request, recorded in the presented
/// session's history.
fn refuse<B: crate::ErrorBody>(session: &Session, check: &'static str, grpc: bool) -> Response<B> {
    session.record_csrf_refusal(check);
    let err = crate::Error::new(
        crate::ErrorKind::Forbidden,
        format!("cross-site request refused ({check})"),
    );
    transport::error_response(&err, grpc)
}

/// An answer of the layer's own that is not a CSRF refusal (nothing is
/// recorded): a form too large or unreadable, a body the layer cannot read.
fn answer<B: crate::ErrorBody>(
    status: http::StatusCode,
    err: crate::Error,
    grpc: bool,
) -> Response<B> {
    let mut res = transport::error_response::<B>(&err, grpc);
    if !grpc {
        *res.status_mut() = status;
    }
    res
}

/// Strict CSRF mode: reads a urlencoded form (axum's body, at most the
/// configured [`form_limit`](crate::Csrf::form_limit)), verifies its token
/// field and calls `inner` with the same bytes. A missing or invalid field
/// is a refusal (recorded); a form over the limit is `413`, a body that
/// fails while it is read `400`, and a body type the layer cannot put back
/// (the layer outside axum's router, under a layer that changes the body
/// type) a `500` that says so; none of those is recorded as an attack.
async fn verify_form<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    session: Session,
    grpc: bool,
) -> Result<S::Future, Answered<B>>
where
    S: Service<Request<ReqBody>>,
    ReqBody: Send + 'static,
    B: crate::ErrorBody,
{
    let misplaced = || {
        answer(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            crate::Error::new(
                crate::ErrorKind::Misconfigured,
                "strict CSRF mode reads forms only as axum's request body: add the session \
                 layer with Router::layer, inside any layer that changes the body type",
            ),
            grpc,
        )
    };
    #[cfg(feature = "axum")]
    {
        use std::any::Any;
        let limit = session.csrf_form_limit();
        let too_large = || {
            answer(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                crate::Error::new(crate::ErrorKind::InvalidInput, "form too large"),
                grpc,
            )
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Answered::request(too_large()));
        }
        let (parts, body) = req.into_parts();
        let body: Box<dyn Any + Send> = Box::new(body);
        let Ok(body) = body.downcast::<axum::body::Body>() else {
            return Err(Answered::request(misplaced()));
        };
        let bytes = match axum::body::to_bytes(*body, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let over = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(Answered::request(if over {
                    too_large()
                } else {
                    answer(
                        http::StatusCode::BAD_REQUEST,
                        crate::Error::new(
                            crate::ErrorKind::InvalidInput,
                            "the form could not be read",
                        ),
                        grpc,
                    )
                }));
            }
        };
        let field = session.csrf_field();
        let verified = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == field))
            .is_some_and(|(_, token)| session.verify_csrf_token(&token));
        if !verified {
            return Err(Answered::refusal(refuse(&session, "form_token", grpc)));
        }
        let body: Box<dyn Any + Send> = Box::new(axum::body::Body::from(bytes));
        let Ok(body) = body.downcast::<ReqBody>() else {
            return Err(Answered::request(misplaced()));
        };
        Ok(inner.call(Request::from_parts(parts, *body)))
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = (&mut inner, req, &session);
        Err(Answered::request(misplaced()))
    }
}

/// The route a request is recorded under (when history is on): axum's
/// matched template when the router set it before this layer ran (the layer
/// added with `Router::layer`), else the path without its query, capped.
fn route_of<B>(shared: &Shared, req: &Request<B>) -> (Option<Route>, bool) {
    if shared.writer.is_none() {
        return (None, false);
    }
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return (Some(Route::Matched(m.clone())), true);
    }
    (Some(Route::path(req.uri().path())), false)
}
