//! The worker's database pool has Nagle's algorithm off on every connection
//! (sqlx-core sets TCP_NODELAY since 0.9.1, sqlx PR #4336), read back from
//! the sockets themselves: the test fails if a sqlx release drops it.

use std::net::TcpStream;
use std::os::fd::OwnedFd;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use session_guard::configuration::{DatabaseSettings, with_database};

/// Whether this process's TCP socket bound to local port `local` has
/// TCP_NODELAY (None: no such socket).
///
/// sqlx does not hand out its sockets, so each descriptor of the process is
/// duplicated through a pidfd: the copy is an owned descriptor of the same
/// socket, which std can query without unsafe code, and closing it leaves the
/// pool's own descriptor open. The local port (from the server's
/// `inet_client_port()`) identifies the connection among those of tests
/// running alongside.
fn nodelay_of_local_port(local: u16) -> Option<bool> {
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open on this process");
    std::fs::read_dir("/proc/self/fd")
        .expect("list this process's descriptors")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .find_map(|fd| {
            let copy: OwnedFd = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()).ok()?;
            let socket = TcpStream::from(copy);
            (socket.local_addr().ok()?.port() == local).then(|| socket.nodelay().ok())?
        })
}

/// Every connection the pool opens over TCP has TCP_NODELAY set.
#[tokio::test]
async fn pooled_database_connections_have_nodelay() {
    let settings = session_guard::Settings::load(None).unwrap();
    let database = DatabaseSettings {
        url: with_database(&settings.database.url, "postgres"),
        max_connections: 2,
    };
    let pool = session_guard::db::connect(&database).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.unwrap();
        let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        // NULL means a Unix socket, which has no Nagle to turn off and would
        // leave nothing to check.
        let port = port.expect(
            "this test needs PostgreSQL over TCP: set SESSION_GUARD__DATABASE__URL to a TCP host",
        );
        let port = u16::try_from(port).expect("a TCP port");
        assert_eq!(nodelay_of_local_port(port), Some(true), "local port {port}");
        held.push(conn);
    }
    drop(held);
    pool.close().await;
}
