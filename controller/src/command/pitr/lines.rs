//! The WAL server's socket: one request line per connection, one answer.
//! Whatever connects is the server's account at best (the socket lies in
//! its data directory): a request is a short line that comes soon, and only
//! so many connections are served at once; more wait to be accepted.
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How much a connection may ask of the server.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// The longest request line, newline included (a WAL file's name, or STATUS).
    pub line_max: u64,
    /// How long the line may take to come.
    pub line_wait: Duration,
}

pub(super) const LIMITS: Limits = Limits { connections: 32, line_max: 128, line_wait: Duration::from_secs(30) };

/// Accepts connections on `listener` for good; each one's line, trimmed, is
/// answered with what `answer` returns. A line too long, not ended by a
/// newline or too slow to come is closed without an answer.
pub(super) async fn serve<F, A>(listener: tokio::net::UnixListener, limits: Limits, answer: F)
where
    F: Fn(String) -> A + Clone + Send + 'static,
    A: Future<Output = Vec<u8>> + Send,
{
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(r, limits.line_max));
            if !matches!(tokio::time::timeout(limits.line_wait, r.read_line(&mut line)).await, Ok(Ok(_))) || !line.ends_with('\n') {
                return;
            }
            let reply = answer(line.trim().to_string()).await;
            let _ = w.write_all(&reply).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    const TEST: Limits = Limits { connections: 2, line_max: 16, line_wait: Duration::from_millis(300) };

    /// Sends `bytes`, then reads the answer to the end (the server closes).
    async fn ask(path: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    }

    fn started() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("wal.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(listener, TEST, |line: String| async move { format!("SEEN {line}\n").into_bytes() }));
        (d, path)
    }

    #[tokio::test]
    async fn a_short_line_is_answered_a_long_or_unended_one_is_not() {
        let (_d, path) = started();
        assert_eq!(ask(&path, b"STATUS\n").await, b"SEEN STATUS\n");
        // 16 bytes at most, newline included
        assert_eq!(ask(&path, b"000000010000000000000001\n").await, b"", "a line over the limit");
        assert_eq!(ask(&path, b"0123456789abcde\n").await, b"SEEN 0123456789abcde\n", "a line at the limit");
        assert_eq!(ask(&path, b"\xff\xfe00000001\n").await, b"", "a line that is not UTF-8");
        assert_eq!(
            ask(&path, "é'; rm -rf /\n".as_bytes()).await,
            "SEEN é'; rm -rf /\n".as_bytes(),
            "any other line is the answerer's to judge"
        );
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"STATUS").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"", "a line the client ended without a newline");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_others_wait_their_turn() {
        let (_d, path) = started();
        let t0 = Instant::now();
        // two silent connections take every place…
        let silent: Vec<UnixStream> =
            futures::future::join_all((0..2).map(|_| UnixStream::connect(&path))).await.into_iter().map(Result::unwrap).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // …so a third is answered only once the server has closed one of them
        assert_eq!(ask(&path, b"STATUS\n").await, b"SEEN STATUS\n");
        let waited = t0.elapsed();
        assert!(waited >= TEST.line_wait, "answered after {waited:?}, before a silent connection was closed");
        for mut s in silent {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"", "a silent connection gets no answer");
        }
    }
}
