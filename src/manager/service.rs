use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_service::Service;

use super::Shared;
use super::future::{Ctx, ResponseFuture};
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: crate::ErrorBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let read = transport::read(shared, req.headers());
        let meta = RequestMeta {
            user_agent: read.user_agent,
            client_ip: transport::client_ip(&shared.config.client_address, &req),
            started_ms: crate::util::now_ms(),
        };
        let mut csrf_refused = None;
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
            match csrf.check(
                req.uri(),
                req.headers(),
                presented,
                read.presented_by_cookie,
            ) {
                crate::csrf::Verdict::Pass => {}
                crate::csrf::Verdict::FormPending => csrf_refused = Some(None),
                crate::csrf::Verdict::Refuse(check) => csrf_refused = Some(Some(check)),
            }
        }
        let grpc = read.grpc;
        let session = Session::new(Arc::clone(shared), read.presented, meta);
        match csrf_refused {
            // Refused before the handler: the inner service is not called.
            Some(Some(check)) => {
                return ResponseFuture::refused(Box::pin(async move {
                    session.record_csrf_refusal(check).await;
                    let err = crate::Error::new(
                        crate::ErrorKind::Forbidden,
                        format!("cross-site request refused ({check})"),
                    );
                    transport::error_response(&err, grpc)
                }));
            }
            Some(None) => session.mark_csrf_pending(),
            None => {}
        }
        req.extensions_mut().insert(session.clone());
        let (route, matched) = route_of(shared, &req);
        let ctx = Ctx {
            method: req.method().clone(),
            route,
            matched,
            grpc: read.grpc,
            used_cookie: read.used_cookie,
            used_header: read.used_header,
            start: Instant::now(),
            session,
            shared: Arc::clone(shared),
        };
        // The inner service was made ready by `poll_ready`; call it here so
        // the instance made ready is the one called.
        ResponseFuture::new(self.inner.call(req), ctx)
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
