//! The front's byte relay between a terminal and its home instance, holding no buffer while the session is idle.
//!
//! A relay lives as long as its session (hours), and a terminal's session is idle almost all the time (a
//! heartbeat now and then). A copy loop with its own buffers (tokio's `copy_bidirectional`) holds them for the
//! whole session: 2 × 2 KiB per terminal, 8 MB of `serve vpn` for 2,000 terminals. Here each direction waits for
//! its source to be readable, then reads into a buffer on the stack and writes it on at once; only bytes the
//! destination could not take right away are kept (in a `Vec` sized to them) until it can, and no more is read
//! from that source meanwhile, so a slow side is never buffered for without bound.
//!
//! The relay ends when either side ends (end of stream or an error): an OpenVPN TCP connection is not half-closed,
//! and both connections are dropped together, so each peer sees the other go.

use std::io;

use tokio::net::TcpStream;

/// Bytes read at once: a whole OpenVPN packet of a 1500-byte tunnel MTU with its length prefix fits.
const CHUNK: usize = 2048;

/// Relays bytes both ways between `a` and `b` until one of them ends. `Ok` when a side ended its stream.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    tokio::select! {
        r = pump(a, b) => r,
        r = pump(b, a) => r,
    }
}

/// One direction: `src`'s bytes to `dst`, until `src` ends.
async fn pump(src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let mut pending = Vec::new();
    loop {
        while !pending.is_empty() {
            dst.writable().await?;
            match dst.try_write(&pending) {
                Ok(n) => drop(pending.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Whatever capacity a slow moment needed is given back before the session goes idle again.
        pending = Vec::new();
        src.readable().await?;
        match move_ready(src, dst, &mut pending)? {
            Moved::Ended => return Ok(()),
            Moved::Some | Moved::Nothing => {}
        }
    }
}

/// What one synchronous read-and-write did.
#[derive(Debug, PartialEq, Eq)]
enum Moved {
    /// `src` ended its stream.
    Ended,
    /// Bytes were read (all written, or the rest left in `pending`).
    Some,
    /// `src` was not readable after all (a spurious wake-up).
    Nothing,
}

/// Reads what `src` has (up to [`CHUNK`]) into a stack buffer and writes it to `dst` at once, leaving in `pending`
/// what `dst` could not take. Synchronous, so the buffer never lives in the relay's future across an await.
fn move_ready(src: &TcpStream, dst: &TcpStream, pending: &mut Vec<u8>) -> io::Result<Moved> {
    let mut buf = [0u8; CHUNK];
    let n = match src.try_read(&mut buf) {
        Ok(0) => return Ok(Moved::Ended),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Moved::Nothing),
        Err(e) => return Err(e),
    };
    let written = match dst.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    pending.extend_from_slice(&buf[written..n]);
    Ok(Moved::Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// terminal ⇄ (front_side · relay · instance_side) ⇄ instance
    async fn relayed() -> (TcpStream, TcpStream, tokio::task::JoinHandle<io::Result<()>>) {
        let (terminal, front_side) = pair().await;
        let (instance_side, instance) = pair().await;
        let task = tokio::spawn(async move { relay(&front_side, &instance_side).await });
        (terminal, instance, task)
    }

    const DEADLINE: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn carries_bytes_both_ways_unchanged() {
        let (mut terminal, mut instance, _task) = relayed().await;
        terminal.write_all(b"\x00\x05hello").await.unwrap();
        let mut got = [0u8; 7];
        tokio::time::timeout(DEADLINE, instance.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"\x00\x05hello");
        instance.write_all(b"\x00\x03ack").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(DEADLINE, terminal.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"\x00\x03ack");
    }

    /// More than the sockets' buffers hold, in both directions at once, with readers slower than the writers:
    /// every byte arrives in order (the `pending` path under backpressure).
    #[tokio::test]
    async fn carries_a_large_transfer_in_order_under_backpressure() {
        let (terminal, instance, _task) = relayed().await;
        const LEN: usize = 16 * 1024 * 1024;
        let data: Vec<u8> = (0..LEN).map(|i| (i * 31 % 251) as u8).collect();
        let (t_read, mut t_write) = terminal.into_split();
        let (i_read, mut i_write) = instance.into_split();
        let (up, down) = (data.clone(), data.clone());
        let send_up = tokio::spawn(async move { t_write.write_all(&up).await.map(|_| t_write) });
        let send_down = tokio::spawn(async move { i_write.write_all(&down).await.map(|_| i_write) });
        let slow_read = |mut r: tokio::net::tcp::OwnedReadHalf| async move {
            let mut got = Vec::with_capacity(LEN);
            let mut chunk = vec![0u8; 1000];
            while got.len() < LEN {
                let n = r.read(&mut chunk).await.unwrap();
                assert!(n > 0, "stream ended after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
                if got.len() % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            got
        };
        let (at_instance, at_terminal) =
            tokio::time::timeout(DEADLINE, async { tokio::join!(slow_read(i_read), slow_read(t_read)) })
                .await
                .expect("transfer within the deadline");
        assert!(at_instance == data, "terminal → instance bytes differ");
        assert!(at_terminal == data, "instance → terminal bytes differ");
        let _ = (send_up.await.unwrap().unwrap(), send_down.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn ends_when_either_side_ends_and_the_other_sees_it() {
        let (terminal, mut instance, task) = relayed().await;
        drop(terminal);
        let ended = tokio::time::timeout(DEADLINE, task).await.expect("relay ended").unwrap();
        assert!(ended.is_ok(), "{ended:?}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(DEADLINE, instance.read_to_end(&mut rest)).await.expect("instance sees the end");
        assert_eq!(n.unwrap(), 0);

        let (mut terminal, instance, task) = relayed().await;
        drop(instance);
        tokio::time::timeout(DEADLINE, task).await.expect("relay ended").unwrap().unwrap();
        let mut rest = Vec::new();
        let seen = tokio::time::timeout(DEADLINE, terminal.read_to_end(&mut rest)).await.expect("terminal sees it");
        assert!(matches!(seen, Ok(0)) || seen.is_err(), "{seen:?}");
    }
}
