use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Response};
use pin_project_lite::pin_project;

use super::Shared;
use crate::history::entry::Route;
use crate::session::{RequestEntry, Session};
use crate::transport;

pub(crate) struct Ctx {
    pub(crate) method: Method,
    /// The route the request is recorded under: axum's matched template
    /// when the router set one before this layer ran, else the path (never
    /// its query), when history is recorded.
    pub(crate) route: Option<Route>,
    /// `route` is a matched template, not a raw path.
    pub(crate) matched: bool,
    pub(crate) grpc: bool,
    pub(crate) used_cookie: bool,
    pub(crate) used_header: bool,
    pub(crate) start: Instant,
    pub(crate) session: Session,
    pub(crate) shared: Arc<Shared>,
}

impl Ctx {
    /// The request's entry, given the status the handler answered. A
    /// request that matched no route (a 404 with no matched template) is
    /// recorded as [`UNMATCHED_ROUTE`](crate::history::entry::UNMATCHED_ROUTE),
    /// never with its path.
    fn request_entry(&self, status: u16) -> RequestEntry {
        let route = match self.session.route() {
            Some(template) => template,
            None => match &self.route {
                Some(r) if self.matched => r.clone(),
                _ if status == 404 => Route::Unmatched,
                Some(r) => r.clone(),
                None => Route::Unmatched,
            },
        };
        RequestEntry {
            method: self.method.clone(),
            route,
            start: self.start,
            status,
        }
    }
}

pub(crate) type Commit<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

/// Resolves to the inner service's future, or to what the layer answered
/// instead of calling it.
pub(crate) type Deferred<F, B> = Pin<Box<dyn Future<Output = Result<F, Answered<B>>> + Send>>;

/// A response the layer gave instead of calling the inner service.
pub(crate) struct Answered<B> {
    res: Response<B>,
    /// Recorded as the request's entry (a form too large or unreadable is a
    /// request of the session like any other); a refused cross-site request
    /// is not (its `suspicious` entry says what happened).
    record: bool,
}

impl<B> Answered<B> {
    pub(crate) fn request(res: Response<B>) -> Self {
        Self { res, record: true }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn refusal(res: Response<B>) -> Self {
        Self { res, record: false }
    }
}

pin_project! {
    /// The response future of [`SessionService`](super::SessionService).
    ///
    /// A request whose session was never loaded completes without any
    /// further work; otherwise the session's changes are persisted before
    /// the response is released. Dropped before that (a client that went
    /// away, a timeout outside the layer), it still enqueues what the
    /// handler recorded.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B>,
        ctx: Option<Ctx>,
        _error: PhantomData<fn() -> E>,
    }

    impl<F, B, E> PinnedDrop for ResponseFuture<F, B, E> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // The inner service was not called yet (strict CSRF mode reading
            // a form): nothing ran, and nothing is recorded.
            if matches!(this.state.as_mut().project(), StateProj::Deferred { .. }) {
                return;
            }
            // Without history too: a login's claimed place goes back.
            if let Some(ctx) = this.ctx.take() {
                let request = ctx.request_entry(crate::session::STATUS_CLIENT_GONE);
                ctx.session.abandon(request);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        /// Strict CSRF mode: the form is read and its token verified before
        /// the inner service is called (see `verify_form`).
        Deferred { fut: Deferred<F, B> },
        Inner { #[pin] fut: F },
        Commit { fut: Commit<B> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn new(fut: F, ctx: Ctx) -> Self {
        Self {
            state: State::Inner { fut },
            ctx: Some(ctx),
            _error: PhantomData,
        }
    }

    /// A request whose inner service is called once `fut` resolves (or
    /// never, when it resolves to a refusal).
    pub(crate) fn deferred(fut: Deferred<F, B>, ctx: Ctx) -> Self {
        Self {
            state: State::Deferred { fut },
            ctx: Some(ctx),
            _error: PhantomData,
        }
    }

    /// A request answered by the layer itself (a refused cross-site
    /// request): the inner service is never called.
    pub(crate) fn refused(fut: Commit<B>) -> Self {
        Self {
            state: State::Commit { fut },
            ctx: None,
            _error: PhantomData,
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: crate::ErrorBody + Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deferred { fut } => match ready!(fut.as_mut().poll(cx)) {
                    Ok(inner) => this.state.set(State::Inner { fut: inner }),
                    Err(Answered { res, record }) => {
                        // The handler never ran: nothing to save. The entry,
                        // if any, is conditioned on the token, as for any
                        // request that never loads its session.
                        if let Some(ctx) = this.ctx.take()
                            && record
                            && ctx.shared.writer.is_some()
                        {
                            let status = res.status().as_u16();
                            ctx.session
                                .record_unloaded(&ctx.request_entry(status), status);
                        }
                        return Poll::Ready(Ok(res));
                    }
                },
                StateProj::Inner { fut } => {
                    let res = match ready!(fut.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            // The inner service failed: nothing to save, but
                            // what the handler recorded is kept.
                            if let Some(ctx) = this.ctx.take() {
                                ctx.session.abandon(ctx.request_entry(500));
                            }
                            return Poll::Ready(Err(e));
                        }
                    };
                    let ctx = this.ctx.take().expect("polled after completion");
                    let needs_commit = ctx.session.is_loaded()
                        || (ctx.shared.config.issue_on_first_visit
                            && ctx.session.presented_sid().is_none());
                    if !needs_commit {
                        // Fast path: nothing was touched. The request is
                        // recorded if it carried a credential, on the
                        // condition that its token is still the session's.
                        if ctx.shared.writer.is_some() && ctx.session.presented_sid().is_some() {
                            let status = res.status().as_u16();
                            ctx.session
                                .record_unloaded(&ctx.request_entry(status), status);
                        }
                        return Poll::Ready(Ok(res));
                    }
                    this.state.set(State::Commit {
                        fut: Box::pin(finish(ctx, res)),
                    });
                }
                StateProj::Commit { fut } => {
                    return fut.as_mut().poll(cx).map(Ok);
                }
            }
        }
    }
}

async fn finish<B: crate::ErrorBody>(ctx: Ctx, mut res: Response<B>) -> Response<B> {
    let request = ctx.request_entry(res.status().as_u16());
    match ctx.session.commit(request).await {
        Ok(action) => {
            transport::write(
                &ctx.shared,
                &mut res,
                &action,
                ctx.used_cookie,
                ctx.used_header,
            );
            res
        }
        // Logged once, with its cause, by `error_response`.
        Err(e) => transport::error_response(&e, ctx.grpc),
    }
}
