//! Who gets into the queue: a bounded queue, a bounded number of waiting or running requests per
//! client, and (on shared servers) a request rate per client (a token bucket). A refused request
//! gets a message saying why and when to try again, at once, instead of hanging. The order in which
//! queued requests start is the worker's (round-robin between clients).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{Error, ErrorKind};

/// The queue's rules.
#[derive(Clone, Debug)]
pub struct Fairness {
    /// Requests waiting or running, all clients together.
    pub max_queue: usize,
    /// Requests waiting or running of one client (browser or API address).
    pub per_client: usize,
    /// Whether `per_minute` and `burst` apply: on for a shared server (`--share`, another host than
    /// loopback) or when set explicitly; a script on localhost is not rate-limited.
    pub rate_limit: bool,
    /// Requests a client may start per minute (sustained).
    pub per_minute: u32,
    /// Requests a client may start in a burst.
    pub burst: u32,
    /// Whether the per-client limits (`per_client`, the rate) also hold for each address, all its
    /// client ids together: on for a shared server, where a peer can make new ids at will.
    pub per_address: bool,
    /// Checkpoint switches waiting, all clients together; more are refused as busy.
    pub max_queued_switches: usize,
    /// The least time between the end of one checkpoint switch and the start of the next.
    pub switch_cooldown: std::time::Duration,
}

impl Default for Fairness {
    fn default() -> Self {
        Self {
            max_queue: 128,
            per_client: 64,
            rate_limit: false,
            per_minute: 60,
            burst: 20,
            per_address: false,
            max_queued_switches: 4,
            switch_cooldown: std::time::Duration::from_millis(500),
        }
    }
}

struct Client {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

impl Client {
    fn new(rules: &Fairness, now: Instant) -> Self {
        Self {
            active: 0,
            tokens: f64::from(rules.burst),
            refilled: now,
        }
    }

    /// Refills the bucket, then says why this client may not start one more request, if so.
    fn refuse(&mut self, rules: &Fairness, now: Instant, who: &str) -> Option<Error> {
        if self.active >= rules.per_client {
            return Some(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "too many requests at once: {who} {} questions being answered or \
                     waiting (the limit is {}); wait for an answer before asking more",
                    self.active, rules.per_client
                ),
            ));
        }
        if !rules.rate_limit {
            return None;
        }
        let rate = f64::from(rules.per_minute) / 60.0;
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate)
            .min(f64::from(rules.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            return None;
        }
        let wait = if rate > 0.0 {
            ((1.0 - self.tokens) / rate).ceil()
        } else {
            60.0
        };
        Some(Error::new(
            ErrorKind::RateLimited,
            format!(
                "too many requests: at most {} a minute (bursts of {}); try again in {wait:.0} s",
                rules.per_minute, rules.burst
            ),
        ))
    }

    fn take(&mut self, rules: &Fairness) {
        if rules.rate_limit {
            self.tokens -= 1.0;
        }
        self.active += 1;
    }
}

#[derive(Default)]
struct State {
    pending: usize,
    clients: HashMap<String, Client>,
    addresses: HashMap<String, Client>,
}

/// Admission control, shared by every handle of an engine.
pub struct Admission {
    rules: Fairness,
    state: Mutex<State>,
}

/// A place in the queue; dropping it (the request ended, was cancelled or dropped) frees it.
pub struct Slot {
    admission: Arc<Admission>,
    client: String,
    address: Option<String>,
}

impl Slot {
    /// The client this place is held for.
    pub fn client(&self) -> &str {
        &self.client
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.client)
    }
}

/// The address part of a client key (`client:<id>@<address>`, `anon@<address>`), if any.
fn address_of(client: &str) -> Option<&str> {
    client.rsplit_once('@').map(|(_, a)| a)
}

/// Forgets idle entries whose bucket is full again (the maps stay bounded).
fn forget_idle(map: &mut HashMap<String, Client>, rules: &Fairness, now: Instant) {
    if map.len() <= 4096 {
        return;
    }
    let full = f64::from(rules.burst);
    let rate = f64::from(rules.per_minute) / 60.0;
    map.retain(|_, c| {
        c.active > 0 || c.tokens + now.duration_since(c.refilled).as_secs_f64() * rate < full
    });
}

impl Admission {
    pub fn new(rules: Fairness) -> Arc<Self> {
        Arc::new(Self {
            rules,
            state: Mutex::new(State::default()),
        })
    }

    pub fn rules(&self) -> &Fairness {
        &self.rules
    }

    /// Requests waiting or running.
    pub fn pending(&self) -> usize {
        self.state.lock().map(|s| s.pending).unwrap_or(0)
    }

    /// Takes a place for `client`, or says why not.
    pub fn admit(self: &Arc<Self>, client: &str) -> Result<Slot, Error> {
        let rules = &self.rules;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| Error::internal("the server is in a bad state; restart it"))?;
        let state = &mut *guard;
        if state.pending >= rules.max_queue {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "the server is busy: {} requests are waiting or running (the limit is {}); \
                 try again in a minute",
                    state.pending, rules.max_queue
                ),
            ));
        }
        let now = Instant::now();
        forget_idle(&mut state.clients, rules, now);
        forget_idle(&mut state.addresses, rules, now);
        let c = state
            .clients
            .entry(client.to_string())
            .or_insert_with(|| Client::new(rules, now));
        if let Some(e) = c.refuse(rules, now, "you already have") {
            return Err(e);
        }
        let address = address_of(client).filter(|_| rules.per_address);
        if let Some(address) = address {
            let a = state
                .addresses
                .entry(address.to_string())
                .or_insert_with(|| Client::new(rules, now));
            if let Some(e) = a.refuse(rules, now, "your address already has") {
                return Err(e);
            }
            a.take(rules);
        }
        if let Some(c) = state.clients.get_mut(client) {
            c.take(rules);
        }
        state.pending += 1;
        Ok(Slot {
            admission: self.clone(),
            client: client.to_string(),
            address: address.map(str::to_string),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut state) = self.admission.state.lock() {
            state.pending = state.pending.saturating_sub(1);
            if let Some(c) = state.clients.get_mut(&self.client) {
                c.active = c.active.saturating_sub(1);
            }
            if let Some(a) = self.address.as_ref() {
                if let Some(a) = state.addresses.get_mut(a) {
                    a.active = a.active.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_queues_up_to_its_cap() {
        let a = Admission::new(Fairness {
            per_client: 3,
            ..Fairness::default()
        });
        let slots: Vec<_> = (0..3).map(|_| a.admit("a").unwrap()).collect();
        let err = a.admit("a").unwrap_err();
        assert!(
            err.kind == ErrorKind::RateLimited
                && err.message.contains("already have 3")
                && err.message.contains("limit is 3"),
            "{err}"
        );
        let _other = a.admit("b").unwrap();
        drop(slots);
        assert!(a.admit("a").is_ok());
    }

    #[test]
    fn no_rate_limit_unless_asked() {
        let a = Admission::new(Fairness {
            per_minute: 1,
            burst: 1,
            ..Fairness::default()
        });
        for _ in 0..30 {
            drop(a.admit("x").unwrap());
        }
    }

    #[test]
    fn bounded_queue() {
        let a = Admission::new(Fairness {
            max_queue: 2,
            ..Fairness::default()
        });
        let _x = a.admit("x").unwrap();
        let _y = a.admit("y").unwrap();
        let busy = a.admit("z").unwrap_err();
        assert!(busy.message.contains("busy"));
        assert_eq!(busy.kind, ErrorKind::Busy);
        assert_eq!(a.pending(), 2);
    }

    #[test]
    fn new_ids_from_one_address_share_its_limits() {
        let a = Admission::new(Fairness {
            per_client: 2,
            per_address: true,
            rate_limit: true,
            per_minute: 1,
            burst: 3,
            ..Fairness::default()
        });
        let _one = a.admit("client:a@10.0.0.7").unwrap();
        let _two = a.admit("client:b@10.0.0.7").unwrap();
        let err = a.admit("client:c@10.0.0.7").unwrap_err();
        assert!(err.message.contains("your address already has 2"), "{err}");
        assert!(a.admit("client:c@10.0.0.8").is_ok(), "another address");
        drop(_one);
        // The address's place is free again, but its burst of 3 is spent (a, b, c@.8 is another).
        let _three = a.admit("anon@10.0.0.7").unwrap();
        drop(_three);
        let err = a.admit("client:d@10.0.0.7").unwrap_err();
        assert!(err.message.contains("a minute"), "{err}");
    }

    #[test]
    fn rate_limit_per_client() {
        let a = Admission::new(Fairness {
            max_queue: 100,
            rate_limit: true,
            per_minute: 1,
            burst: 3,
            ..Fairness::default()
        });
        for _ in 0..3 {
            drop(a.admit("x").unwrap());
        }
        let err = a.admit("x").unwrap_err();
        assert!(err.message.contains("too many requests"), "{err}");
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(a.admit("y").is_ok());
    }
}
