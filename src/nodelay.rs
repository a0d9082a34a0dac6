//! TCP_NODELAY on the database connections.
//!
//! sqlx 0.9.0 opens its TCP connections with Nagle's algorithm on (sqlx
//! issue #4335; the fix, PR #4336, is merged but not released). A statement
//! whose message spans more than one TCP segment (a batch's UNNEST arrays
//! easily do: over 64 KiB on loopback, over 1.4 KiB on Ethernet) then has
//! its last segment held back until the server acknowledges the first, and
//! the server delays that acknowledgement by up to 40 ms. Measured here: the
//! touch statement of a 500-event batch took 43-47 ms instead of about 2 ms,
//! and the whole pipeline waited on it.
//!
//! sqlx does not hand out its sockets, so each new connection finds its own
//! among the process's descriptors, by peer port, and switches Nagle off.
//! Every database connection wants it off, so a descriptor of another pooled
//! connection to the same port is harmless to set again. Remove this module
//! once a sqlx release sets the option itself.

use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};

/// Where the process's open descriptors are listed: Linux first, then the
/// BSDs and macOS.
const FD_DIRS: [&str; 2] = ["/proc/self/fd", "/dev/fd"];

/// Sets TCP_NODELAY on every TCP socket of this process whose peer port is
/// `port` and that does not have it yet. Returns how many such sockets have
/// it now (set by this call or before: 0 means none was found).
pub fn set_on_connections_to(port: u16) -> std::io::Result<usize> {
    let mut last_error = None;
    for dir in FD_DIRS {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let fds: Vec<RawFd> = entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                return Ok(fds
                    .into_iter()
                    .filter(|fd| set_if_peer(*fd, port) == Some(true))
                    .count());
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("FD_DIRS is not empty"))
}

/// Sets TCP_NODELAY on `fd` if it is a TCP socket connected to `port`.
/// Returns whether it has the option now (None: not such a socket).
fn set_if_peer(fd: RawFd, port: u16) -> Option<bool> {
    // SAFETY: the stream only borrows the descriptor (ManuallyDrop: it is
    // never closed here) for two getters and one setsockopt. If another
    // thread closes it meanwhile, these calls fail with EBADF or apply to
    // whatever reused the number, which is checked to be a TCP connection to
    // the database port first; nothing here reads or writes its data.
    let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    // Not a socket, not an inet socket, or not connected: an error here.
    if stream.peer_addr().ok()?.port() != port {
        return None;
    }
    Some(stream.nodelay().ok()? || stream.set_nodelay(true).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_the_connection_by_peer_port_and_sets_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(!client.nodelay().unwrap());

        // Other tests' sockets may share the process: only ours has this
        // peer port (the accepted side's peer is the client's port).
        assert_eq!(set_on_connections_to(port).unwrap(), 1);
        assert!(client.nodelay().unwrap());
        assert!(
            !accepted.nodelay().unwrap(),
            "the listener's side is not ours"
        );
        assert_eq!(set_on_connections_to(port).unwrap(), 1, "already set");
        assert_eq!(
            set_if_peer(listener.as_raw_fd(), port),
            None,
            "not connected"
        );
    }

    /// Whether this process's TCP socket with local port `local` has
    /// TCP_NODELAY (None: no such socket).
    fn nodelay_of_local_port(local: u16) -> Option<bool> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .find_map(|fd| {
                // SAFETY: as in `set_if_peer`; only getters are called.
                let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
                (s.local_addr().ok()?.port() == local).then(|| s.nodelay().ok())?
            })
    }

    /// The pool the worker uses really has Nagle off on its connections, as
    /// the server sees them (the local PostgreSQL, over TCP).
    #[tokio::test]
    async fn pooled_database_connections_have_nodelay() {
        let settings = crate::Settings::load(None).unwrap();
        let database = crate::configuration::DatabaseSettings {
            url: crate::configuration::with_database(&settings.database.url, "postgres"),
            max_connections: 2,
        };
        let pool = crate::db::connect(&database).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut conn = pool.acquire().await.unwrap();
            let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            // NULL over a Unix socket, where there is no Nagle to turn off.
            if let Some(port) = port {
                assert_eq!(nodelay_of_local_port(port as u16), Some(true));
            }
            held.push(conn);
        }
        drop(held);
        pool.close().await;
    }
}
