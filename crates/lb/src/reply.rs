//! How an answer finds its way back to the proxy connection that asked.
//!
//! Every proxy connection owns one channel of [`Answer`]s; each request
//! carries a [`ReplyTo`] (a clone of that channel's sender, the caller's
//! seqid and the method name for error texts). Whoever settles the request
//! (the worker task, the dispatcher's queue) sends exactly one answer
//! through it; a `ReplyTo` dropped unanswered sends a failure itself, so the
//! connection never waits for an answer that cannot come.

use rpc_codec::{Message, NameBuf};
use rpc_engine::Failure;
use tokio::sync::mpsc;

/// What travels back to a proxy connection.
#[derive(Debug)]
pub enum Answer {
    /// The worker's reply, seqid already the caller's.
    Reply(Message),
    /// Anything else: the frontend words the exception.
    Error(Box<Failed>),
}

impl Answer {
    /// The caller's seqid and the method the answer is for.
    pub fn names(&self) -> (i32, &[u8]) {
        match self {
            Answer::Reply(msg) => (msg.seqid(), msg.name()),
            Answer::Error(f) => (f.seqid, f.method.as_bytes()),
        }
    }
}

/// A request answered with an exception: why, and what names it.
#[derive(Debug)]
pub struct Failed {
    pub failure: Failure,
    pub seqid: i32,
    pub method: NameBuf,
}

pub type AnswerTx = mpsc::UnboundedSender<Answer>;
pub type AnswerRx = mpsc::UnboundedReceiver<Answer>;

/// Where one request's answer goes. Answered at most once; answered with a
/// failure when dropped unanswered.
#[derive(Debug)]
pub struct ReplyTo {
    tx: AnswerTx,
    /// The caller's seqid, restored on the reply.
    seqid: i32,
    method: NameBuf,
    done: bool,
}

impl ReplyTo {
    pub fn new(tx: AnswerTx, seqid: i32, method: &[u8]) -> ReplyTo {
        ReplyTo {
            tx,
            seqid,
            method: NameBuf::new(method),
            done: false,
        }
    }

    /// Nobody reads answers any more (the proxy connection is gone).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Delivers the worker's reply (its seqid already the caller's: the
    /// worker connection's `SeqTable` restored it).
    pub fn reply(mut self, msg: Message) {
        self.done = true;
        let _ = self.tx.send(Answer::Reply(msg));
    }

    /// Answers with an exception instead of a reply.
    pub fn fail(mut self, failure: Failure) {
        self.answer_failure(failure);
    }

    fn answer_failure(&mut self, failure: Failure) {
        self.done = true;
        let failed = Failed {
            failure,
            seqid: self.seqid,
            method: std::mem::replace(&mut self.method, NameBuf::Heap(Box::default())),
        };
        let _ = self.tx.send(Answer::Error(Box::new(failed)));
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.done {
            self.answer_failure(Failure::Stopping("the LB"));
        }
    }
}
