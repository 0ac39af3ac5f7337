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
use crate::history::entry::{Draft, Route};
use crate::session::{CredentialAction, Session};
use crate::transport;

pub(crate) struct Ctx {
    pub(crate) method: Method,
    /// The request's path (never its query) when history is recorded.
    pub(crate) path: Option<Route>,
    pub(crate) grpc: bool,
    pub(crate) used_cookie: bool,
    pub(crate) used_header: bool,
    pub(crate) start: Instant,
    pub(crate) session: Session,
    pub(crate) shared: Arc<Shared>,
}

type Commit<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

pin_project! {
    /// The response future of [`SessionService`](super::SessionService).
    ///
    /// A request whose session was never loaded completes without any
    /// further work; otherwise the session's changes are persisted before
    /// the response is released.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B>,
        ctx: Option<Ctx>,
        _error: PhantomData<fn() -> E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
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
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default + Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    let ctx = this.ctx.take().expect("polled after completion");
                    let needs_commit = ctx.session.is_loaded()
                        || (ctx.shared.config.issue_on_first_visit
                            && ctx.session.presented_sid().is_none());
                    if !needs_commit {
                        // Fast path: nothing was touched; record the request
                        // if it carried a session.
                        if let Some(sid) = ctx
                            .session
                            .presented_sid()
                            .filter(|_| ctx.shared.writer.is_some())
                        {
                            let route = ctx.session.route();
                            let draft = request_draft(&ctx, route, res.status().as_u16(), None);
                            ctx.shared.enqueue_one(sid, draft);
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

fn request_draft(ctx: &Ctx, route: Option<Route>, status: u16, user: Option<[u8; 8]>) -> Draft {
    let route = route
        .or_else(|| ctx.path.clone())
        .unwrap_or_else(|| Route::path(""));
    let latency = ctx.start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
    Draft::request_fields(ctx.method.clone(), route, status, latency, user)
}

async fn finish<B: Default>(ctx: Ctx, mut res: Response<B>) -> Response<B> {
    let route = ctx.session.route();
    match ctx.session.commit().await {
        Ok(outcome) => {
            transport::write(
                &ctx.shared,
                &mut res,
                &outcome.action,
                ctx.used_cookie,
                ctx.used_header,
            );
            if let Some((sid, mut drafts)) = outcome.entries
                && ctx.shared.writer.is_some()
            {
                let user = outcome
                    .user
                    .as_deref()
                    .filter(|_| outcome.action != CredentialAction::Clear)
                    .map(|u| ctx.shared.user_pseudonym_bytes(u));
                drafts.push(request_draft(&ctx, route, res.status().as_u16(), user));
                ctx.shared.enqueue(sid, drafts);
            }
            res
        }
        Err(e) => {
            tracing::warn!(error = %e, "session could not be saved; answering 503");
            let res: Response<B> = transport::error_response(&e, ctx.grpc);
            if let Some(sid) = ctx.session.presented_sid() {
                let draft = request_draft(&ctx, route, res.status().as_u16(), None);
                ctx.shared.enqueue_one(sid, draft);
            }
            res
        }
    }
}
