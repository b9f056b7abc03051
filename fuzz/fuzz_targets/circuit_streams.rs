//! Fuzz the stream table (`veilnet_circuit::Streams`), a client and an exit
//! joined by two ordered pipes.
//!
//! The input is a sequence of operations: open a stream, move the next
//! message along a pipe, send DATA while credit lasts, deliver or hold what
//! arrived, finish, reset, close, and inject raw relay payloads (any bytes,
//! decoded as the engine would). Checks:
//!
//! * Nothing panics, whatever the order.
//! * While a side has had nothing injected, the other side is honest, so it
//!   never reports a protocol violation: no error from `handle` and no
//!   stream reset for `EndReason::Protocol`.
//! * Credit never exceeds the windows, and no table outgrows its limit.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use veilnet_cell::{decode_relay, EndReason, RelayMsg, StreamId, TargetAddr};
use veilnet_circuit::{Credit, Event, FlowParams, Outgoing, Role, StreamHandle, Streams};

const FLOW: FlowParams = FlowParams {
    stream_window: 6,
    stream_sendme: 2,
    circ_window: 9,
    circ_sendme: 3,
};
const MAX_STREAMS: usize = 4;

/// A message on its way to the other side.
enum Msg {
    Table(StreamId, Outgoing),
    Data(StreamId, Vec<u8>),
}

struct Side {
    streams: Streams<()>,
    /// Cells delivered to this side's applications and not yet read.
    held: Vec<StreamHandle>,
    /// Raw bytes were injected here: violations are allowed.
    tainted: bool,
    /// The circuit died here (an error from `handle`).
    dead: bool,
    /// Messages this side sent, in order.
    out: VecDeque<Msg>,
}

impl Side {
    fn new(role: Role) -> Self {
        Self {
            streams: Streams::new(role, FLOW, MAX_STREAMS),
            held: Vec::new(),
            tainted: false,
            dead: false,
            out: VecDeque::new(),
        }
    }

    fn collect(&mut self) {
        while let Some(t) = self.streams.poll_transmit() {
            self.out.push_back(Msg::Table(t.sid, t.msg));
        }
    }

    fn pick(&self, b: u8) -> Option<StreamHandle> {
        let all: Vec<StreamHandle> = self.streams.handles().collect();
        (!all.is_empty()).then(|| all[b as usize % all.len()])
    }

    /// Feeds one message; `hold` keeps delivered DATA unread.
    fn receive(&mut self, sid: StreamId, msg: &RelayMsg<'_>, hold: bool, connect: bool) {
        if self.dead {
            return;
        }
        match self.streams.handle(sid, msg) {
            Err(e) => {
                assert!(self.tainted, "an honest peer broke the protocol: {e}");
                self.dead = true;
            }
            Ok(Some(Event::Ended(_, EndReason::Protocol, ()))) => {
                assert!(self.tainted, "an honest peer's stream was reset");
            }
            Ok(Some(Event::Deliver(h))) => {
                if hold {
                    self.held.push(h);
                } else {
                    self.streams.delivered(Some(h), 1);
                }
            }
            Ok(Some(Event::Begin(sid, _))) => {
                if let Ok(h) = self.streams.accept(sid, ()) {
                    if connect {
                        assert!(self.streams.connected(h));
                    }
                }
            }
            Ok(_) => {}
        }
        self.collect();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut sides = [Side::new(Role::Client), Side::new(Role::Exit)];
    let mut at = 0;
    for _ in 0..2000 {
        let Some(&[op, a, b]) = data.get(at..at + 3) else {
            break;
        };
        at += 3;
        let who = (op & 1) as usize;
        let (me, other) = if who == 0 {
            let (l, r) = sides.split_at_mut(1);
            (&mut l[0], &mut r[0])
        } else {
            let (l, r) = sides.split_at_mut(1);
            (&mut r[0], &mut l[0])
        };
        match op >> 1 {
            0 => {
                let target = TargetAddr::Domain("fuzz.test".into(), u16::from(a));
                let _ = me.streams.open(target, ());
                me.collect();
            }
            // Move the next message of my pipe to the other side.
            1 | 2 | 3 => {
                if let Some(m) = me.out.pop_front() {
                    let (hold, connect) = (a & 1 == 1, a & 2 == 0);
                    match &m {
                        Msg::Table(sid, o) => other.receive(*sid, &o.as_msg(), hold, connect),
                        Msg::Data(sid, d) => other.receive(*sid, &RelayMsg::Data(d), hold, connect),
                    }
                }
            }
            // Send DATA while credit lasts, on one stream, up to `b` cells.
            4 => {
                if let Some(h) = me.pick(a) {
                    for _ in 0..(b % 8) {
                        if me.streams.try_take_credit(h) != Credit::Taken {
                            break;
                        }
                        me.out.push_back(Msg::Data(h.sid(), vec![a; 1 + b as usize]));
                    }
                }
            }
            // Take credit and give it back (a send that failed).
            5 => {
                if let Some(h) = me.pick(a) {
                    if me.streams.try_take_credit(h) == Credit::Taken {
                        me.streams.refund_credit(h);
                    }
                }
            }
            // Read what is held.
            6 => {
                for h in std::mem::take(&mut me.held) {
                    me.streams.delivered(Some(h), 1);
                }
                me.collect();
            }
            7 => {
                if let Some(h) = me.pick(a) {
                    me.streams.finish(h);
                    me.collect();
                }
            }
            8 => {
                if let Some(h) = me.pick(a) {
                    let reason = (b & 1 == 1).then_some(EndReason::Misc);
                    me.streams.reset(h, reason);
                    me.collect();
                }
            }
            9 if a == 0xFF => {
                me.streams.close();
                me.collect();
            }
            // Raw bytes from the other side: decoded as the engine does.
            10 => {
                let rest = &data[at..];
                let raw = &rest[..(b as usize).min(rest.len())];
                if let Ok((sid, msg)) = decode_relay(raw) {
                    me.tainted = true;
                    me.receive(sid, &msg, a & 1 == 1, a & 2 == 0);
                }
            }
            _ => {}
        }
        for s in &sides {
            assert!(s.streams.circuit_credit() <= FLOW.circ_window);
            assert!(s.streams.circuit_unacked() <= FLOW.circ_window);
            assert!(s.streams.len() <= MAX_STREAMS);
            for h in s.streams.handles() {
                assert!(s.streams.stream_credit(h) <= FLOW.stream_window);
            }
        }
    }
});
