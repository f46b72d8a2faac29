//! The commands of the faces, as the engine takes them: the face's first,
//! then the observer's (the attach server's clients, through a bounded queue).
use crate::control::Command;
use crossbeam_channel::{never, Receiver, Select};
use std::{collections::VecDeque, time::Duration};

/// Commands held while a pass looks for a stop request, at most.
const PENDING: usize = 1024;

/// Where commands come from: the face (never refused) and the observer's
/// clients (through a bounded queue); a source that closes is left. Those
/// read while looking for a stop wait in `pending`, in order.
pub struct Commands {
    face: Receiver<Command>,
    clients: Receiver<Command>,
    face_open: bool,
    clients_open: bool,
    pending: VecDeque<Command>,
}

impl Commands {
    pub fn new(face: Receiver<Command>, clients: Receiver<Command>) -> Commands {
        Commands {
            face,
            clients,
            face_open: true,
            clients_open: true,
            pending: VecDeque::new(),
        }
    }

    fn arrived(&self) -> Option<Command> {
        self.face.try_recv().ok().or_else(|| self.clients.try_recv().ok())
    }

    /// The next command, if one is waiting; the face's first.
    pub fn try_next(&mut self) -> Option<Command> {
        self.pending.pop_front().or_else(|| self.arrived())
    }

    /// Whether a stop was asked for; what came meanwhile stays queued.
    pub fn stop_requested(&mut self) -> bool {
        while self.pending.len() < PENDING {
            match self.arrived() {
                Some(c) => self.pending.push_back(c),
                None => break,
            }
        }
        self.pending.iter().any(|c| matches!(c, Command::Stop { .. }))
    }

    /// Whether every source closed (no face is left to send a command).
    pub fn closed(&self) -> bool {
        !self.face_open && !self.clients_open
    }

    /// Waits up to `timeout` for a command to arrive (it stays queued).
    pub fn wait_for(&mut self, timeout: Duration) {
        if self.pending.is_empty() {
            if let Some(c) = self.receive(Some(timeout)) {
                self.pending.push_back(c);
            }
        }
    }

    /// Waits for the next command; None once no source is left.
    pub fn wait(&mut self) -> Option<Command> {
        if let Some(c) = self.pending.pop_front() {
            return Some(c);
        }
        while !self.closed() {
            if let Some(c) = self.receive(None) {
                return Some(c);
            }
        }
        None
    }

    /// A command from the open sources within `timeout` (None: until one
    /// comes or a source closes, which is left).
    fn receive(&mut self, timeout: Option<Duration>) -> Option<Command> {
        let none = never();
        let face = if self.face_open { &self.face } else { &none };
        let clients = if self.clients_open { &self.clients } else { &none };
        let mut select = Select::new();
        let from_face = select.recv(face);
        select.recv(clients);
        let op = match timeout {
            Some(t) => select.select_timeout(t).ok()?,
            None => select.select(),
        };
        let from_face = op.index() == from_face;
        match op.recv(if from_face { face } else { clients }) {
            Ok(c) => Some(c),
            Err(_) if from_face => {
                self.face_open = false;
                None
            }
            Err(_) => {
                self.clients_open = false;
                None
            }
        }
    }
}
