//! Worker protocols in the shell (SPEC 12): a reply line from a worker is decoded
//! by its pool's protocol ([`crate::protocol::decode_line`]) and handed to the ledger
//! as what it is (the answer to the oldest message, to a tagged message, or no
//! reply at all); a `node` worker's IPC channel is read for replies and closed before
//! the worker is signalled. Nothing here decides anything: the codecs and the ledger
//! do.

use crate::config::Protocol;
use crate::protocol::{self, WorkerLine};

use super::Daemon;

impl Daemon {
    /// A run of complete lines (each with its `\n`) from a worker's reply channel, or
    /// "too long" in place of a line: a `lines` worker's go to the ledger at once;
    /// the other protocols' are decoded line by line.
    pub(super) fn on_worker_run(
        &mut self,
        k: usize,
        p: Protocol,
        run: Result<&[u8], &'static str>,
    ) {
        match (p, run) {
            (Protocol::Lines, run) => self.on_worker_replies(k, run),
            (_, Ok(lines)) => {
                for line in lines.split_inclusive(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\n").unwrap_or(line);
                    self.on_worker_line(k, p, Ok(line));
                }
            }
            (_, Err(why)) => self.on_worker_line(k, p, Err(why)),
        }
    }

    /// One framed line from a worker's reply channel (or "too long" in its place).
    pub(super) fn on_worker_line(
        &mut self,
        k: usize,
        p: Protocol,
        frame: Result<&[u8], &'static str>,
    ) {
        let line = match frame {
            Ok(l) => protocol::decode_line(p, l),
            Err(_) => protocol::decode_too_long(p),
        };
        match line {
            WorkerLine::Next(reply) => self.on_worker_reply(k, Ok(&reply)),
            WorkerLine::NextFails(why) => self.on_worker_reply(k, Err(why)),
            WorkerLine::Tagged(tag, reply) => {
                self.ledger
                    .worker_reply_tagged(k, tag, Ok(reply), self.now, &mut self.ledger_out);
                self.ledger_exec();
            }
            WorkerLine::TaggedFails(tag, why) => {
                self.ledger
                    .worker_reply_tagged(k, tag, Err(why), self.now, &mut self.ledger_out);
                self.ledger_exec();
            }
            WorkerLine::NotAReply(n) => {
                if let Some(inst) = self.instances.get(k) {
                    log::log!(n.level(), "{}: {n}", inst.label);
                }
            }
        }
    }

    /// A `node` worker's channel is readable: its lines are replies. EOF is not
    /// death (waitpid decides): the channel is closed and the worker lives on.
    pub(super) fn on_worker_channel(&mut self, k: usize) {
        let Some(mut pipe) = self.instances.get_mut(k).and_then(|i| i.channel.take()) else {
            return;
        };
        let label = self.instances[k].label.clone();
        let open = pipe.read_replies(&label, |run| self.on_worker_run(k, Protocol::Node, run));
        match self.instances.get_mut(k) {
            Some(inst) if open => {
                pipe.buf.shrink();
                inst.channel = Some(pipe);
            }
            _ => {
                if let Some(rest) = pipe.buf.take_partial() {
                    log::warn!(
                        "{label}: discarding a half-written reply of {} bytes",
                        rest.len()
                    );
                }
                self.deregister_io(&mut pipe.rx, pipe.token);
                if self.instances.get(k).is_some_and(|i| i.stdin.is_some()) {
                    log::debug!("{label}: the worker closed its IPC channel");
                    self.close_worker_stdin(k);
                }
            }
        }
    }

    /// After the worker's death: stop reading its channel.
    pub(super) fn close_worker_channel(&mut self, k: usize) {
        if let Some(mut pipe) = self.instances.get_mut(k).and_then(|i| i.channel.take()) {
            if let Some(rest) = pipe.buf.take_partial() {
                log::warn!(
                    "{}: discarding a half-written reply of {} bytes",
                    self.instances[k].label,
                    rest.len()
                );
            }
            self.deregister_io(&mut pipe.rx, pipe.token);
        }
    }

    /// Before `stop_signal` goes to a `node` worker: close its channel, so that it
    /// gets `disconnect` first (its in-flight messages were drained before, where
    /// the stop allows: retiring, held, shutdown).
    pub(super) fn close_channel_before_signal(&mut self, k: usize) {
        let node = self
            .instances
            .get(k)
            .is_some_and(|i| i.protocol() == Protocol::Node && i.stdin.is_some());
        if node {
            self.close_worker_stdin(k);
        }
    }
}
