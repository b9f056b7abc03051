//! Flow-control windows as plain counters (in the manner of arti's
//! `SendWindow`/`RecvWindow`): a sender takes one credit per DATA cell and
//! gets `increment` back per SENDME; a receiver counts what it received and
//! delivered and says when a SENDME is due. A peer that sends beyond the
//! window, or returns more credit than was outstanding, is a typed protocol
//! violation. The parameters belong to each circuit.

use crate::error::PeerMisbehaved;

/// Flow-control parameters of one circuit, in cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowParams {
    /// Unacknowledged DATA cells allowed per stream.
    pub stream_window: u32,
    /// Cells acknowledged by one stream SENDME.
    pub stream_sendme: u32,
    /// Unacknowledged DATA cells allowed per circuit.
    pub circ_window: u32,
    /// Cells acknowledged by one circuit SENDME.
    pub circ_sendme: u32,
}

impl Default for FlowParams {
    /// 1024 cells (2 MB) per stream and 2048 per circuit, credited in eighths.
    fn default() -> Self {
        Self {
            stream_window: 1024,
            stream_sendme: 128,
            circ_window: 2048,
            circ_sendme: 256,
        }
    }
}

impl FlowParams {
    /// Checks that every window is at least one increment and every
    /// increment at least one cell.
    pub fn validate(&self) -> Result<(), &'static str> {
        let ok = |window: u32, increment: u32| increment > 0 && increment <= window;
        if !ok(self.stream_window, self.stream_sendme) {
            return Err("stream_sendme must be between 1 and stream_window");
        }
        if !ok(self.circ_window, self.circ_sendme) {
            return Err("circ_sendme must be between 1 and circ_window");
        }
        Ok(())
    }

    /// A stream's send window.
    pub fn stream_send(&self) -> SendWindow {
        SendWindow::new(self.stream_window, self.stream_sendme, "stream")
    }

    /// A stream's receive window.
    pub fn stream_recv(&self) -> RecvWindow {
        RecvWindow::new(self.stream_window, self.stream_sendme, "stream")
    }

    /// The circuit's send window.
    pub fn circ_send(&self) -> SendWindow {
        SendWindow::new(self.circ_window, self.circ_sendme, "circuit")
    }

    /// The circuit's receive window.
    pub fn circ_recv(&self) -> RecvWindow {
        RecvWindow::new(self.circ_window, self.circ_sendme, "circuit")
    }
}

/// Credit we have to send DATA cells.
#[derive(Debug, Clone)]
pub struct SendWindow {
    available: u32,
    max: u32,
    increment: u32,
    what: &'static str,
}

impl SendWindow {
    /// A full window of `max` cells, refilled by `increment` per SENDME.
    pub fn new(max: u32, increment: u32, what: &'static str) -> Self {
        Self {
            available: max,
            max,
            increment,
            what,
        }
    }

    /// Cells we may still send.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Takes one cell of credit; false (and nothing taken) if there is none:
    /// wait for a SENDME.
    pub fn try_take(&mut self) -> bool {
        if self.available == 0 {
            return false;
        }
        self.available -= 1;
        true
    }

    /// Gives back one cell of credit taken by [`try_take`](Self::try_take)
    /// for a cell that was never sent (its sender gave up first).
    pub fn refund(&mut self) {
        self.available = (self.available + 1).min(self.max);
    }

    /// A SENDME arrived: `increment` cells of credit come back. More credit
    /// than was outstanding is the peer's protocol violation.
    pub fn put(&mut self) -> Result<(), PeerMisbehaved> {
        let refilled = self.available + self.increment;
        if refilled > self.max {
            return Err(PeerMisbehaved::SendmeBeyondWindow(self.what));
        }
        self.available = refilled;
        Ok(())
    }
}

/// What we owe a sender: DATA cells received but not yet acknowledged.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    /// Received and not yet acknowledged by a SENDME we sent.
    outstanding: u32,
    /// Delivered (written out or discarded) since the last SENDME.
    delivered: u32,
    max: u32,
    increment: u32,
    what: &'static str,
}

impl RecvWindow {
    /// The window of a sender with `max` cells of credit, acknowledged by
    /// `increment` per SENDME.
    pub fn new(max: u32, increment: u32, what: &'static str) -> Self {
        Self {
            outstanding: 0,
            delivered: 0,
            max,
            // Never zero: `delivered` divides by it ([`FlowParams::validate`]
            // refuses such parameters before they get here).
            increment: increment.max(1),
            what,
        }
    }

    /// A DATA cell arrived. An honest sender never has more than `max`
    /// cells unacknowledged (credit comes back only after we deliver), so
    /// one more is the peer's protocol violation.
    pub fn take(&mut self) -> Result<(), PeerMisbehaved> {
        if self.outstanding >= self.max {
            return Err(PeerMisbehaved::WindowExceeded(self.what));
        }
        self.outstanding += 1;
        Ok(())
    }

    /// `n` cells were delivered (written to the application or discarded):
    /// returns how many SENDMEs are due now.
    pub fn delivered(&mut self, n: u32) -> u32 {
        self.delivered += n;
        let due = self.delivered / self.increment;
        self.delivered %= self.increment;
        self.outstanding = self.outstanding.saturating_sub(due * self.increment);
        due
    }

    /// Cells received and not yet acknowledged.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_and_a_receiver_in_step_never_break_the_window() {
        let p = FlowParams {
            stream_window: 8,
            stream_sendme: 2,
            circ_window: 8,
            circ_sendme: 2,
        };
        let (mut send, mut recv) = (p.stream_send(), p.stream_recv());
        let mut in_flight = 0;
        for round in 0..100 {
            // Send all we may, deliver half of it, return the credit due.
            while send.try_take() {
                recv.take().unwrap();
                in_flight += 1;
            }
            assert_eq!(send.available(), 0);
            let n = in_flight / 2 + round % 2;
            in_flight -= n;
            for _ in 0..recv.delivered(n) {
                send.put().unwrap();
            }
        }
    }

    #[test]
    fn overdraw_and_over_credit_are_violations() {
        let mut recv = RecvWindow::new(3, 1, "stream");
        for _ in 0..3 {
            recv.take().unwrap();
        }
        assert_eq!(recv.take(), Err(PeerMisbehaved::WindowExceeded("stream")));
        let mut send = SendWindow::new(4, 2, "circuit");
        assert_eq!(
            send.put(),
            Err(PeerMisbehaved::SendmeBeyondWindow("circuit"))
        );
        assert!(send.try_take() && send.try_take());
        send.put().unwrap();
        assert_eq!(send.available(), 4);
        for _ in 0..4 {
            assert!(send.try_take());
        }
        assert!(!send.try_take());
    }

    #[test]
    fn bad_parameters_are_refused_and_refunds_stay_in_the_window() {
        assert!(FlowParams::default().validate().is_ok());
        let zero = FlowParams {
            stream_sendme: 0,
            ..FlowParams::default()
        };
        assert!(zero.validate().is_err());
        let too_big = FlowParams {
            circ_sendme: 4096,
            ..FlowParams::default()
        };
        assert!(too_big.validate().is_err());
        let mut send = SendWindow::new(2, 1, "stream");
        send.refund();
        assert_eq!(send.available(), 2);
        assert!(send.try_take());
        send.refund();
        assert_eq!(send.available(), 2);
    }

    #[test]
    fn sendmes_come_due_per_increment_delivered() {
        let mut recv = RecvWindow::new(10, 4, "stream");
        for _ in 0..10 {
            recv.take().unwrap();
        }
        assert_eq!(recv.delivered(3), 0);
        assert_eq!(recv.delivered(6), 2);
        assert_eq!(recv.outstanding(), 2);
        assert_eq!(recv.delivered(1), 0);
    }
}
