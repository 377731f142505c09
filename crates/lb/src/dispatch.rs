//! Which worker gets a request, and what waits when none can take it.
//!
//! The dispatcher knows every connected worker's load (requests handed to
//! it and not yet answered) and its capacity (`worker_pool_size`, plus
//! `worker_prefetch` calls that may wait inside the worker). With
//! `dispatch=least_loaded` a request goes to the worker with the fewest
//! requests in flight among those with a free slot, so prefetch slots fill
//! only once every worker's pool is busy; when every slot is taken it waits
//! in one bounded FIFO queue and leaves it the moment a slot frees (or is
//! answered with a timeout once its deadline passes, never having been
//! sent). `dispatch=round_robin` is the original's rotation
//! over workers regardless of their load, kept for comparison; it still
//! caps each worker at `backend_max_inflight` so memory stays bounded.
//!
//! All of it sits behind one short mutex that is never held across an
//! `.await`: a dispatch decision is a scan over a handful of workers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use rpc_codec::Message;
use rpc_config::Dispatch;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use rpc_engine::balance::{Balancer, Load, Strategy};
use rpc_engine::Failure;

use crate::metrics::{WorkerCounters, WorkerTotals};
use crate::reply::ReplyTo;

/// One request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    /// The request as read, seqid still the caller's.
    pub msg: Message,
    /// `None` for oneway calls.
    pub reply: Option<ReplyTo>,
    pub deadline: Instant,
}

impl Job {
    /// Whether nobody is waiting for this job any more (caller gone or
    /// deadline passed): such a job is dropped instead of sent.
    fn is_stale(&self, now: Instant) -> bool {
        now >= self.deadline || self.reply.as_ref().is_some_and(|r| r.is_closed())
    }

    fn answer(self, failure: Failure) {
        if let Some(reply) = self.reply {
            reply.fail(failure);
        }
    }
}

/// Identifies a worker connection for its lifetime.
pub type WorkerId = u64;

struct WorkerSlot {
    id: WorkerId,
    tx: mpsc::UnboundedSender<Job>,
    /// Jobs handed over and not yet answered (or, for oneway, written).
    inflight: usize,
    /// Most jobs in flight at once.
    capacity: usize,
    /// Cleared when the worker announced STOP.
    accepting: bool,
    /// Set while the worker leaves a heartbeat unanswered: no new jobs
    /// until it answers (a stopped process, a silent link).
    suspect: bool,
    /// Written by the worker's task, read when scraped.
    counters: Arc<WorkerCounters>,
}

impl Load for WorkerSlot {
    fn ready(&self) -> bool {
        self.accepting && !self.suspect && self.inflight < self.capacity
    }

    fn cheaper_than(&self, other: &Self) -> bool {
        self.inflight < other.inflight
    }

    fn idle(&self) -> bool {
        self.inflight == 0
    }
}

struct Core {
    workers: Vec<WorkerSlot>,
    queue: VecDeque<Job>,
    next_id: WorkerId,
    /// Counters of the workers gone.
    retired: WorkerTotals,
}

/// A snapshot for tests, logs and the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Workers taking new requests.
    pub workers: usize,
    /// Requests in flight, summed over workers.
    pub inflight: usize,
    pub queued: usize,
}

/// One worker as the status page shows it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: WorkerId,
    pub peer: String,
    /// The worker's process, when the LB could tell it.
    pub pid: Option<u32>,
    /// Taking new requests (not stopping).
    pub serving: bool,
    /// Left a heartbeat unanswered: no new requests until it answers.
    pub suspect: bool,
    pub capacity: usize,
    pub inflight: usize,
    pub served: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_missed: u64,
}

/// One worker process over its connections ([`Dispatcher::process`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Process {
    /// Calls answered over its connections still open.
    pub served: u64,
    /// One of its connections takes requests.
    pub serving: bool,
}

/// Everything the status page reads from the dispatcher, taken at once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workers: Vec<WorkerView>,
    pub queued: usize,
    pub queue_limit: usize,
    /// Worker connections accepted since start.
    pub worker_connections: u64,
    /// Counters of every worker, connected or gone.
    pub totals: WorkerTotals,
}

pub struct Dispatcher {
    core: Mutex<Core>,
    /// Least-loaded or round-robin over the workers with a free slot; its
    /// cursor (the tie-breaker that spreads equal loads) survives workers
    /// coming and going.
    balancer: Balancer,
    /// Most requests in flight per worker.
    per_worker: usize,
    queue_size: usize,
    /// Woken when the queue goes from empty to non-empty.
    queue_wake: Notify,
    /// Number of workers taking new requests.
    accepting: watch::Sender<usize>,
}

impl Dispatcher {
    /// `pool_size + prefetch` calls per worker with least-loaded dispatch,
    /// `rr_limit` with round-robin; `queue_size` waiting for all of them.
    pub fn new(
        mode: Dispatch,
        (pool_size, prefetch): (usize, usize),
        rr_limit: usize,
        queue_size: usize,
    ) -> Arc<Dispatcher> {
        let per_worker = match mode {
            Dispatch::LeastLoaded => pool_size.max(1) + prefetch,
            Dispatch::RoundRobin => rr_limit.max(1),
        };
        Arc::new(Dispatcher {
            core: Mutex::new(Core {
                workers: Vec::new(),
                queue: VecDeque::new(),
                next_id: 1,
                retired: WorkerTotals::default(),
            }),
            balancer: Balancer::new(match mode {
                Dispatch::LeastLoaded => Strategy::LeastLoaded,
                Dispatch::RoundRobin => Strategy::RoundRobin,
            }),
            per_worker,
            queue_size,
            queue_wake: Notify::new(),
            accepting: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic elsewhere cannot leave the core half-updated in a way
        // that matters more than stopping the LB would.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of workers taking new requests, as it changes.
    pub fn accepting_workers(&self) -> watch::Receiver<usize> {
        self.accepting.subscribe()
    }

    pub fn stats(&self) -> Stats {
        let core = self.lock();
        Stats {
            workers: core.workers.iter().filter(|w| w.accepting).count(),
            inflight: core.workers.iter().map(|w| w.inflight).sum(),
            queued: core.queue.len(),
        }
    }

    /// For the status page (takes the lock once; never on the request path).
    pub fn snapshot(&self) -> Snapshot {
        let core = self.lock();
        let mut totals = core.retired.clone();
        let workers = core
            .workers
            .iter()
            .map(|w| {
                totals.add(&w.counters);
                WorkerView {
                    id: w.id,
                    peer: w.counters.peer.clone(),
                    pid: match w.counters.pid.load(std::sync::atomic::Ordering::Relaxed) {
                        0 => None,
                        p => Some(p),
                    },
                    serving: w.accepting,
                    suspect: w.suspect,
                    capacity: self.per_worker,
                    inflight: w.inflight,
                    served: w.counters.served.get(),
                    heartbeats_sent: w.counters.heartbeats_sent.get(),
                    heartbeats_missed: w.counters.heartbeats_missed.get(),
                }
            })
            .collect();
        Snapshot {
            workers,
            queued: core.queue.len(),
            queue_limit: self.queue_size,
            worker_connections: core.next_id - 1,
            totals,
        }
    }

    /// What the connections of process `pid` did: calls answered, and
    /// whether one of them takes requests. For the supervisor's frequent
    /// looks: one short lock, no allocation.
    pub fn process(&self, pid: u32) -> Process {
        let core = self.lock();
        let mut p = Process::default();
        for w in &core.workers {
            if w.counters.pid.load(std::sync::atomic::Ordering::Relaxed) == pid {
                p.served += w.counters.served.get();
                p.serving |= w.accepting;
            }
        }
        p
    }

    /// Sends the job to a worker, queues it, or answers it at once.
    #[cfg(test)]
    pub fn submit(&self, job: Job) {
        let mut core = self.lock();
        self.submit_locked(&mut core, job);
    }

    /// [`Self::submit`] for a batch, under one lock; empties `jobs`.
    pub fn submit_many(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut core = self.lock();
        for job in jobs.drain(..) {
            self.submit_locked(&mut core, job);
        }
    }

    fn submit_locked(&self, core: &mut MutexGuard<'_, Core>, job: Job) {
        let core = &mut **core;
        // FIFO: while others wait, a newcomer waits behind them.
        let job = if core.queue.is_empty() {
            match self.pick(core) {
                Some(i) => {
                    self.hand_over(core, i, job);
                    return;
                }
                None => job,
            }
        } else {
            job
        };
        if core.queue.len() >= self.queue_size {
            // Answering only queues a message: fine under the lock.
            job.answer(Failure::Rejected(
                "LB queue full: every worker slot is busy and queue_size requests wait",
            ));
            return;
        }
        let was_empty = core.queue.is_empty();
        core.queue.push_back(job);
        if was_empty {
            self.queue_wake.notify_one();
        }
    }

    /// Index of the worker the next request should go to, if any can take it.
    fn pick(&self, core: &Core) -> Option<usize> {
        self.balancer.pick(&core.workers)
    }

    fn hand_over(&self, core: &mut Core, i: usize, job: Job) {
        let w = &mut core.workers[i];
        w.inflight += 1;
        if let Err(mpsc::error::SendError(job)) = w.tx.send(job) {
            // The worker task is gone and about to deregister; keep the job
            // for the others.
            w.inflight -= 1;
            w.accepting = false;
            core.queue.push_front(job);
        }
    }

    /// Moves queued jobs to free slots; stale ones are answered instead.
    fn pump(&self, core: &mut Core, expired: &mut Vec<Job>) {
        let now = Instant::now();
        while let Some(front) = core.queue.front() {
            if front.is_stale(now) {
                expired.extend(core.queue.pop_front());
                continue;
            }
            let Some(i) = self.pick(core) else { break };
            let job = core.queue.pop_front().expect("front exists");
            self.hand_over(core, i, job);
        }
    }

    fn finish(expired: Vec<Job>) {
        for job in expired {
            job.answer(Failure::TimeoutInQueue);
        }
    }

    fn publish(&self, core: &Core) {
        let n = core.workers.iter().filter(|w| w.accepting).count();
        self.accepting
            .send_if_modified(|v| std::mem::replace(v, n) != n);
    }

    /// A worker connected: it starts taking jobs (queued ones first).
    /// `counters` are its task's, shown while it is connected.
    pub fn add_worker(
        &self,
        tx: mpsc::UnboundedSender<Job>,
        counters: Arc<WorkerCounters>,
    ) -> WorkerId {
        let mut expired = Vec::new();
        let id = {
            let mut core = self.lock();
            let id = core.next_id;
            core.next_id += 1;
            core.workers.push(WorkerSlot {
                id,
                tx,
                inflight: 0,
                capacity: self.per_worker,
                accepting: true,
                suspect: false,
                counters,
            });
            self.publish(&core);
            self.pump(&mut core, &mut expired);
            id
        };
        Self::finish(expired);
        id
    }

    /// `n` of the worker's jobs are done (answered, written oneway, or
    /// dropped unsent); their slots go to whatever waits.
    pub fn release(&self, id: WorkerId, n: usize) {
        let mut expired = Vec::new();
        {
            let mut core = self.lock();
            if let Some(w) = core.workers.iter_mut().find(|w| w.id == id) {
                w.inflight = w.inflight.saturating_sub(n);
            }
            if !core.queue.is_empty() {
                self.pump(&mut core, &mut expired);
            }
        }
        Self::finish(expired);
    }

    /// The worker left a heartbeat unanswered (`true`: no new jobs for
    /// it, the queue goes to the others) or answered again (`false`: it
    /// takes jobs again, queued ones first).
    pub fn set_suspect(&self, id: WorkerId, suspect: bool) {
        let mut expired = Vec::new();
        {
            let mut core = self.lock();
            if let Some(w) = core.workers.iter_mut().find(|w| w.id == id) {
                w.suspect = suspect;
            }
            if !suspect && !core.queue.is_empty() {
                self.pump(&mut core, &mut expired);
            }
        }
        Self::finish(expired);
    }

    /// The worker announced STOP: no new jobs for it. The caller then
    /// drains its channel and hands the unsent jobs to [`Self::requeue`].
    pub fn stop_worker(&self, id: WorkerId) {
        let mut core = self.lock();
        if let Some(w) = core.workers.iter_mut().find(|w| w.id == id) {
            w.accepting = false;
        }
        self.publish(&core);
    }

    /// The worker is gone: it gets nothing more. Its unsent jobs follow
    /// through [`Self::requeue`]; its written ones the caller fails. Its
    /// counters are final by now and join the totals.
    pub fn remove_worker(&self, id: WorkerId) {
        let mut core = self.lock();
        if let Some(i) = core.workers.iter().position(|w| w.id == id) {
            let gone = core.workers.remove(i);
            core.retired.add(&gone.counters);
        }
        self.publish(&core);
    }

    /// Jobs a worker took but never wrote go back to the head of the queue
    /// (they were admitted before anything waiting now) and on to others.
    pub fn requeue(&self, id: WorkerId, unsent: Vec<Job>) {
        if unsent.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        {
            let mut core = self.lock();
            if let Some(w) = core.workers.iter_mut().find(|w| w.id == id) {
                w.inflight = w.inflight.saturating_sub(unsent.len());
            }
            for job in unsent.into_iter().rev() {
                core.queue.push_front(job);
            }
            self.pump(&mut core, &mut expired);
            if !core.queue.is_empty() {
                // Requeued jobs may carry the earliest deadlines.
                self.queue_wake.notify_one();
            }
        }
        Self::finish(expired);
    }

    /// Answers queued jobs whose deadline passed, so a full queue of
    /// abandoned requests never turns newcomers away. Runs until dropped.
    pub async fn sweep_expired(self: Arc<Self>) {
        loop {
            let mut expired = Vec::new();
            let next = {
                let mut core = self.lock();
                let now = Instant::now();
                while core.queue.front().is_some_and(|j| j.is_stale(now)) {
                    expired.extend(core.queue.pop_front());
                }
                core.queue.front().map(|j| j.deadline)
            };
            Self::finish(expired);
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.queue_wake.notified() => {}
                    }
                }
                None => self.queue_wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_codec::{encode_message, MessageType};
    use std::time::Duration;

    use crate::reply::{Answer, AnswerRx, ReplyTo};

    fn job(tag: i32, timeout: Duration) -> (Job, AnswerRx) {
        let msg = Message::parse(encode_message(MessageType::Call, b"m", tag, b"")).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            msg,
            reply: Some(ReplyTo::new(tx, tag, b"m")),
            deadline: Instant::now() + timeout,
        };
        (job, rx)
    }

    /// The outcome answered so far, if any.
    fn outcome(rx: &mut AnswerRx) -> Option<Result<Message, Failure>> {
        match rx.try_recv().ok()? {
            Answer::Reply(m) => Some(Ok(m)),
            Answer::Error(f) => Some(Err(f.failure)),
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Job>) -> Vec<i32> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|j| j.msg.seqid())
            .collect()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn least_loaded_fills_evenly_then_queues_fifo_then_rejects() {
        let d = Dispatcher::new(Dispatch::LeastLoaded, (2, 0), 100, 2);
        let (ta, mut a) = mpsc::unbounded_channel();
        let (tb, mut b) = mpsc::unbounded_channel();
        let ia = d.add_worker(ta, Default::default());
        let ib = d.add_worker(tb, Default::default());
        let mut keep = Vec::new();
        for i in 0..7 {
            let (j, rx) = job(i, LONG);
            d.submit(j);
            keep.push(rx);
        }
        let (got_a, got_b) = (drain(&mut a), drain(&mut b));
        // Spread: one each before anyone gets a second, two at most.
        assert_eq!((got_a, got_b), (vec![0, 2], vec![1, 3]));
        assert_eq!(d.stats().queued, 2);
        // The 7th found the queue full.
        assert!(matches!(
            outcome(&mut keep[6]),
            Some(Err(Failure::Rejected(_)))
        ));
        // A freed slot takes the oldest waiting job.
        d.release(ib, 1);
        assert_eq!(drain(&mut b), vec![4]);
        d.release(ia, 1);
        assert_eq!(drain(&mut a), vec![5]);
        assert_eq!(d.stats().queued, 0);
    }

    #[tokio::test]
    async fn prefetch_slots_fill_only_once_every_pool_is_busy() {
        let d = Dispatcher::new(Dispatch::LeastLoaded, (2, 1), 100, 10);
        let (ta, mut a) = mpsc::unbounded_channel();
        let (tb, mut b) = mpsc::unbounded_channel();
        let ia = d.add_worker(ta, Default::default());
        d.add_worker(tb, Default::default());
        let mut keep = Vec::new();
        for i in 0..4 {
            let (j, rx) = job(i, LONG);
            d.submit(j);
            keep.push(rx);
        }
        // Pools first, evenly.
        assert_eq!((drain(&mut a), drain(&mut b)), (vec![0, 2], vec![1, 3]));
        // A freed pool slot is taken before any prefetch slot.
        d.release(ia, 1);
        let (j, rx) = job(4, LONG);
        d.submit(j);
        keep.push(rx);
        assert_eq!((drain(&mut a), drain(&mut b)), (vec![4], vec![]));
        // Every pool busy: one call more each, then the queue.
        for i in 5..8 {
            let (j, rx) = job(i, LONG);
            d.submit(j);
            keep.push(rx);
        }
        assert_eq!((drain(&mut a), drain(&mut b)), (vec![6], vec![5]));
        assert_eq!(d.stats().queued, 1);
        assert_eq!(d.snapshot().workers[0].capacity, 3);
    }

    #[tokio::test]
    async fn stale_queued_jobs_are_answered_not_sent() {
        let d = Dispatcher::new(Dispatch::LeastLoaded, (1, 0), 100, 10);
        let (ta, mut a) = mpsc::unbounded_channel();
        let ia = d.add_worker(ta, Default::default());
        let (j0, _r0) = job(0, LONG);
        let (j1, mut r1) = job(1, Duration::from_millis(1));
        let (j2, r2) = job(2, LONG);
        let (j3, _r3) = job(3, LONG);
        d.submit(j0);
        d.submit(j1);
        d.submit(j2);
        d.submit(j3);
        drop(r2); // caller gone
        assert_eq!(drain(&mut a), vec![0]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        d.release(ia, 1);
        assert_eq!(drain(&mut a), vec![3]);
        assert!(matches!(
            outcome(&mut r1),
            Some(Err(Failure::TimeoutInQueue))
        ));
    }

    #[tokio::test]
    async fn sweeper_expires_queued_jobs_on_time() {
        let d = Dispatcher::new(Dispatch::LeastLoaded, (1, 0), 100, 10);
        let sweeper = tokio::spawn(d.clone().sweep_expired());
        let (j, mut rx) = job(1, Duration::from_millis(50));
        d.submit(j); // no worker: queued
        assert_eq!(d.stats().queued, 1);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(got, Ok(Some(Answer::Error(f))) if matches!(f.failure, Failure::TimeoutInQueue))
        );
        assert_eq!(d.stats().queued, 0);
        sweeper.abort();
    }

    #[tokio::test]
    async fn stopped_or_removed_worker_gets_nothing_and_its_unsent_jobs_move_on() {
        let d = Dispatcher::new(Dispatch::LeastLoaded, (4, 0), 100, 10);
        let mut count = d.accepting_workers();
        let (ta, mut a) = mpsc::unbounded_channel();
        let (tb, mut b) = mpsc::unbounded_channel();
        let ia = d.add_worker(ta, Default::default());
        assert_eq!(*count.borrow_and_update(), 1);
        let (j, _r) = job(1, LONG);
        d.submit(j);
        let (j, _r2) = job(2, LONG);
        d.submit(j);
        assert_eq!(d.stats().inflight, 2);
        d.stop_worker(ia);
        assert_eq!(*count.borrow_and_update(), 0);
        // Its channel still holds both; they go back to the queue head.
        let unsent: Vec<Job> = std::iter::from_fn(|| a.try_recv().ok()).collect();
        d.requeue(ia, unsent);
        assert_eq!(d.stats().queued, 2);
        let ib = d.add_worker(tb, Default::default());
        assert_eq!(drain(&mut b), vec![1, 2]);
        d.remove_worker(ia);
        d.remove_worker(ib);
        assert_eq!(*count.borrow_and_update(), 0);
        let (j, _r3) = job(3, LONG);
        d.submit(j);
        assert_eq!(d.stats().queued, 1, "no worker: waits for one");
    }

    #[tokio::test]
    async fn round_robin_rotates_regardless_of_load() {
        let d = Dispatcher::new(Dispatch::RoundRobin, (1, 0), 3, 10);
        let (ta, mut a) = mpsc::unbounded_channel();
        let (tb, mut b) = mpsc::unbounded_channel();
        d.add_worker(ta, Default::default());
        d.add_worker(tb, Default::default());
        let mut keep = Vec::new();
        for i in 0..8 {
            let (j, rx) = job(i, LONG);
            d.submit(j);
            keep.push(rx);
        }
        // Capped only by the hard per-worker limit (3), not the pool size.
        assert_eq!(drain(&mut a), vec![0, 2, 4]);
        assert_eq!(drain(&mut b), vec![1, 3, 5]);
        assert_eq!(d.stats().queued, 2);
    }
}
