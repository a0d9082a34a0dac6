//! Several broker addresses (the nodes of a RabbitMQ cluster) and the one
//! way the worker and the client crate connect to one of them.
//!
//! [`Brokers::connect`] makes one pass over the list: it tries each broker
//! at most once, with [`CONNECT_TIMEOUT`], and returns the first connection
//! made. It starts at a broker picked at random, so that many processes
//! given the same list do not all pick its first broker, nor, when a node
//! dies, all move to the same next one; and it tries the broker of its last
//! connection last, since after a lost connection that node may be gone.
//! From the random start it goes round the list in order. A broker that
//! refuses the connection (a node that is down) costs nothing: the next is
//! tried at once. Only when every broker failed does the pass fail; the
//! caller then pauses with its jittered [`Backoff`](crate::backoff::Backoff)
//! and makes another pass.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::url::{redact_url, split_urls};

/// How long one connection attempt may take (TCP, TLS and the AMQP
/// handshake) before it counts as failed: a broker behind a dropped route
/// would otherwise hold the attempt for the operating system's TCP timeout,
/// and the brokers after it in the list would never be tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One broker of the list.
struct Broker {
    uri: AMQPUri,
    /// Its URL without the password, for messages.
    shown: String,
}

/// The brokers a process may connect to, and which one it last connected to.
pub struct Brokers {
    brokers: Vec<Broker>,
    /// Index of the broker of the last connection made ([`NONE`] before
    /// the first): the next pass tries it last.
    last: AtomicUsize,
    /// Where every pass starts instead of a random place (tests).
    fixed_start: Option<usize>,
}

/// [`Brokers::last`] before any connection.
const NONE: usize = usize::MAX;

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.brokers.iter().map(|b| &b.shown))
            .finish()
    }
}

/// A connection made by [`Brokers::connect`].
pub struct Connected {
    pub connection: Connection,
    /// The broker's URL, password masked.
    pub shown_url: String,
    /// The broker's place in the list.
    pub index: usize,
}

impl Brokers {
    /// The brokers of `urls`: one URL, or several separated by commas
    /// ([`split_urls`]). The error names the URL that does not parse (password
    /// masked) and why.
    pub fn parse(urls: &str) -> Result<Brokers, String> {
        Brokers::from_list(split_urls(urls))
    }

    /// The brokers of a list of URLs (at least one).
    pub fn from_list<I, S>(urls: I) -> Result<Brokers, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<S> = urls.into_iter().collect();
        let count = urls.len();
        let brokers = urls
            .iter()
            .enumerate()
            .map(|(at, url)| {
                let url = url.as_ref();
                let shown = redact_url(url);
                let uri = url.parse::<AMQPUri>().map_err(|e| {
                    // lapin's message may quote the URL, password and all.
                    let e = e.replace(url, &shown);
                    match count {
                        1 => format!("cannot parse {shown}: {e}"),
                        _ => format!("cannot parse URL {} of {count}, {shown}: {e}", at + 1),
                    }
                })?;
                Ok(Broker { uri, shown })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if brokers.is_empty() {
            return Err("no broker URL".to_owned());
        }
        Ok(Brokers {
            brokers,
            last: AtomicUsize::new(NONE),
            fixed_start: None,
        })
    }

    /// The same brokers, every pass starting at `index` rather than at a
    /// random place (the broker of the last connection still comes last):
    /// for a fixed order (tests).
    pub fn starting_at(mut self, index: usize) -> Brokers {
        self.fixed_start = Some(index);
        self
    }

    /// The order of the next pass: from a random start (or the fixed one)
    /// round the list, the broker of the last connection last.
    fn order(&self) -> Vec<usize> {
        // RandomState is seeded from the OS's generator, once per process
        // and then anew for each instance: a start that differs between
        // processes (containers all run as pid 1) and between passes,
        // without a dependency on rand.
        let start = self
            .fixed_start
            .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()) as usize);
        let count = self.brokers.len();
        let last = self.last.load(Ordering::Relaxed);
        let others: Vec<usize> = (0..count).filter(|&i| i != last).collect();
        let mut order: Vec<usize> = (0..others.len())
            .map(|k| others[(start + k) % others.len()])
            .collect();
        if last < count {
            order.push(last);
        }
        order
    }

    /// How many brokers there are.
    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    /// Never: a list has at least one broker.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    /// The parsed URLs, in the order given.
    pub fn uris(&self) -> impl Iterator<Item = &AMQPUri> {
        self.brokers.iter().map(|b| &b.uri)
    }

    /// Every URL, passwords masked, comma-separated.
    pub fn shown(&self) -> String {
        let shown: Vec<&str> = self.brokers.iter().map(|b| b.shown.as_str()).collect();
        shown.join(",")
    }

    /// One pass over the brokers (see the module's documentation): the
    /// first connection made, or why each broker failed.
    pub async fn connect(
        &self,
        properties: ConnectionProperties,
    ) -> Result<Connected, ConnectError> {
        let mut failures = Vec::new();
        for index in self.order() {
            let broker = &self.brokers[index];
            let attempt = Connection::connect_uri(broker.uri.clone(), properties.clone());
            let cause = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => {
                    // Should this connection be lost, the next pass tries
                    // this broker last: it may be gone.
                    self.last.store(index, Ordering::Relaxed);
                    return Ok(Connected {
                        connection,
                        shown_url: broker.shown.clone(),
                        index,
                    });
                }
                Ok(Err(e)) => FailureCause::Broker(e),
                Err(_) => FailureCause::TimedOut(CONNECT_TIMEOUT),
            };
            failures.push(Failure {
                shown_url: broker.shown.clone(),
                cause,
            });
        }
        Err(ConnectError { failures })
    }
}

/// Every broker of a pass failed.
#[derive(Debug)]
pub struct ConnectError {
    /// One per broker, in the order tried.
    pub failures: Vec<Failure>,
}

/// Why one broker failed.
#[derive(Debug)]
pub struct Failure {
    /// The broker's URL, password masked.
    pub shown_url: String,
    pub cause: FailureCause,
}

#[derive(Debug)]
pub enum FailureCause {
    /// What lapin reported: out of reach, or the broker's refusal.
    Broker(lapin::Error),
    /// No connection within this long.
    TimedOut(Duration),
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Broker(e) => write!(f, "{e}"),
            FailureCause::TimedOut(after) => write!(f, "no answer within {} s", after.as_secs()),
        }
    }
}

impl ConnectError {
    /// Whether no broker answered in time: every one timed out.
    pub fn timed_out(&self) -> bool {
        self.failures
            .iter()
            .all(|f| matches!(f.cause, FailureCause::TimedOut(_)))
    }

    /// The lapin error that says the most: a broker's answer (a refusal:
    /// wrong credentials, a vhost) over a broker out of reach, which the
    /// other brokers would not change. `None` if every broker timed out.
    pub fn cause(&self) -> Option<&lapin::Error> {
        let errors = || {
            self.failures.iter().filter_map(|f| match &f.cause {
                FailureCause::Broker(e) => Some(e),
                FailureCause::TimedOut(_) => None,
            })
        };
        errors().find(|e| answered(e)).or_else(|| errors().next())
    }

    /// [`ConnectError::cause`] as a value; a time-out becomes an I/O error
    /// of kind `TimedOut`.
    pub fn into_cause(self) -> lapin::Error {
        let telling = self
            .failures
            .iter()
            .position(|f| matches!(&f.cause, FailureCause::Broker(e) if answered(e)))
            .or_else(|| {
                self.failures
                    .iter()
                    .position(|f| matches!(f.cause, FailureCause::Broker(_)))
            });
        let mut failures = self.failures;
        match telling.map(|at| failures.swap_remove(at).cause) {
            Some(FailureCause::Broker(e)) => e,
            _ => lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            )),
        }
    }
}

/// Whether the broker itself answered (and said no), rather than being out
/// of reach.
fn answered(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(_) | lapin::ErrorKind::AuthProviderError(_)
    )
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One broker: its cause alone (the caller names the URL, as it did
        // before lists). Several: each, with its URL.
        match self.failures.as_slice() {
            [one] => write!(f, "{}", one.cause),
            failures => {
                for (i, failure) in failures.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{}: {}", failure.shown_url, failure.cause)?;
                }
                Ok(())
            }
        }
    }
}

/// No `source`: the message already holds every cause, and a source would
/// print one of them again in a chain of causes. [`ConnectError::cause`]
/// is how to look at the error that says the most (the worker's refusal
/// handling does).
impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_show_no_password() {
        let brokers = Brokers::parse("amqp://u:s3cret@a/%2f, amqp://u:s3cret@b:5673/%2f").unwrap();
        assert_eq!(brokers.len(), 2);
        assert_eq!(
            brokers.shown(),
            "amqp://u:***@a/%2f,amqp://u:***@b:5673/%2f"
        );
        assert!(!format!("{brokers:?}").contains("s3cret"));
        let error =
            Brokers::parse("amqp://u:s3cret@a/%2f,amqp://u:s3cret@b:notaport/%2f").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.starts_with("cannot parse URL 2 of 2"), "{error}");
        assert!(Brokers::from_list(Vec::<String>::new()).is_err());
    }

    #[test]
    fn passes_start_at_random_and_try_the_last_connected_broker_last() {
        use std::collections::HashSet;
        let brokers = Brokers::parse("amqp://a,amqp://b,amqp://c").unwrap();
        let orders: Vec<Vec<usize>> = (0..60).map(|_| brokers.order()).collect();
        // Each broker once, round the list from where it starts.
        for order in &orders {
            assert_eq!(order.len(), 3);
            assert_eq!(order[1], (order[0] + 1) % 3, "{order:?}");
            assert_eq!(order[2], (order[0] + 2) % 3, "{order:?}");
        }
        let firsts: HashSet<usize> = orders.iter().map(|o| o[0]).collect();
        assert_eq!(
            firsts.len(),
            3,
            "every broker starts some passes: {firsts:?}"
        );

        // Connected to b, then lost: b comes last, and the processes that
        // were on it spread over a and c.
        brokers.last.store(1, Ordering::Relaxed);
        let orders: Vec<Vec<usize>> = (0..60).map(|_| brokers.order()).collect();
        assert!(
            orders.iter().all(|o| o.len() == 3 && o[2] == 1),
            "{orders:?}"
        );
        let firsts: HashSet<usize> = orders.iter().map(|o| o[0]).collect();
        assert_eq!(firsts, HashSet::from([0, 2]));

        // A fixed start, and a list of one.
        let fixed = Brokers::parse("amqp://a,amqp://b,amqp://c")
            .unwrap()
            .starting_at(2);
        assert_eq!(fixed.order(), [2, 0, 1]);
        fixed.last.store(0, Ordering::Relaxed);
        assert_eq!(fixed.order(), [1, 2, 0]);
        let one = Brokers::parse("amqp://a").unwrap();
        assert_eq!(one.order(), [0]);
        one.last.store(0, Ordering::Relaxed);
        assert_eq!(one.order(), [0]);
    }
}
