//! An input as the machine passes it around inside: [`Input`], with a
//! fetch's result boxed.
//!
//! An [`Input`] is as large as its largest variant, a fetch's
//! [`TokenResponse`] (176 bytes), and each hand-off of one, from the
//! driver's call on through the functions that route an answer (to the
//! awaited request, to the lease call, or to the late-answer rule), copied
//! all of it, whatever the input: a tick carries nothing, a cache load (the
//! most common answer) 48 bytes. Converted once, where the driver calls
//! [`RefreshMachine::handle_input`] (it is inlined there, so the
//! conversion reads the driver's input in place), an input is 64 bytes,
//! and a fetch's result (one per refresh period) is the one that pays an
//! allocation.

use super::*;

/// An [`Input`] (its variants of the same names, the answers apart).
#[derive(Debug)]
pub(super) enum Received {
    Start,
    Tick,
    Invalidate(TokenId),
    NeedValidity(Duration),
    Shutdown,
    Answer(Answer),
}

impl From<Input> for Received {
    #[inline(always)]
    fn from(input: Input) -> Self {
        let answer = match input {
            Input::Start => return Received::Start,
            Input::Tick => return Received::Tick,
            Input::Invalidate(id) => return Received::Invalidate(id),
            Input::NeedValidity(needed) => return Received::NeedValidity(needed),
            Input::Shutdown => return Received::Shutdown,
            Input::CacheLoaded(id, result) => Answer::CacheLoaded(id, result),
            Input::Fetched(id, result) => Answer::Fetched(id, Box::new(result)),
            Input::Stored(id, result) => Answer::Stored(id, result),
            Input::Lease(id, result) => Answer::Lease(id, result),
            Input::Released(id, _) => Answer::Released(id),
        };
        Received::Answer(answer)
    }
}

/// One of [`Input`]'s answers (its variants of the same names).
#[derive(Debug)]
pub(super) enum Answer {
    CacheLoaded(RequestId, Result<Option<Arc<Token>>, CacheError>),
    Fetched(RequestId, Box<Result<TokenResponse, FetchError>>),
    Stored(RequestId, Result<(), CacheError>),
    Lease(RequestId, Result<LeaseOutcome, CacheError>),
    /// (Its error is the driver's to report: the lease then lapses by
    /// its TTL.)
    Released(RequestId),
}

impl Answer {
    /// The request it answers.
    pub(super) fn id(&self) -> RequestId {
        match self {
            Answer::CacheLoaded(id, _)
            | Answer::Fetched(id, _)
            | Answer::Stored(id, _)
            | Answer::Lease(id, _)
            | Answer::Released(id) => *id,
        }
    }
}
