//! Execution log files read in bounded pieces: a log's text streamed into its JSON answer,
//! events found by sequence number with a binary search instead of a read from the start.
//!
//! A log can be far larger than the server's memory should grow for one request (a chatty
//! step on many nodes writes hundreds of megabytes). Before, `GET /log` read the whole file
//! into a string and the answer into another, and `?since=` and every websocket read the whole
//! events file, however little of it they sent.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use axum::body::{Body, Bytes};
use dopc_client::api::{Event, Level, LogEvents, LogText, Status};
use futures_util::stream;

/// Bytes read from a log file at a time.
pub const CHUNK: usize = 256 * 1024;

/// Below this distance the search for an event stops and the caller reads forward.
const SEARCH_WINDOW: u64 = 64 * 1024;

/// The sequence number of an event line: events are written with `seq` first, so it is read
/// without parsing the line (every subscriber does this for every event). A line that does
/// not start so is parsed whole.
pub fn seq_of(line: &str) -> Option<u64> {
    match line.strip_prefix("{\"seq\":") {
        Some(rest) => rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok()),
        None => serde_json::from_str::<Event>(line).ok().map(|e| e.seq),
    }
}

/// A line start in `events.jsonl` before which every event has a sequence number of at most
/// `since`: the reader starts there and skips the few lines up to the first newer one. Events
/// are written in order of their numbers, so a binary search over the file's lines finds it in
/// a few small reads.
pub fn offset_after(file: &File, since: u64) -> u64 {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return 0;
    };
    if since == 0 {
        return 0;
    }
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > SEARCH_WINDOW {
        let mid = lo + (hi - lo) / 2;
        match line_after(file, mid, hi) {
            Some((start, Some(seq))) if seq <= since => lo = start,
            // Newer, or a line that cannot be read: the answer is before it (or the reader
            // finds it going forward from `lo`, which stays right).
            Some((start, _)) => hi = start,
            None => break,
        }
    }
    lo
}

/// The first line that starts after `at` (and before `end`), and its sequence number.
fn line_after(file: &File, at: u64, end: u64) -> Option<(u64, Option<u64>)> {
    let mut buf = [0u8; 8192];
    let mut pos = at;
    let start = loop {
        if pos >= end {
            return None;
        }
        let n = file.read_at(&mut buf, pos).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
            break pos + i as u64 + 1;
        }
        pos += n as u64;
    };
    if start >= end {
        return None;
    }
    let mut head = [0u8; 64];
    let n = file.read_at(&mut head, start).ok()?;
    let head = String::from_utf8_lossy(&head[..n]);
    let digits = head.strip_prefix("{\"seq\":").map(|rest| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    Some((start, digits.and_then(|d| d.parse().ok())))
}

/// Complete UTF-8 text from `pending` (an incomplete character at its end waits for the next
/// read unless `at_end`; bytes that are not UTF-8 become U+FFFD, as a lossy read would).
fn take_text(pending: &mut Vec<u8>, at_end: bool) -> String {
    let mut text = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(all) => {
                text.push_str(all);
                pending.clear();
                return text;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        pending.drain(..valid + bad);
                    }
                    None if at_end => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        pending.clear();
                        return text;
                    }
                    None => {
                        pending.drain(..valid);
                        return text;
                    }
                }
            }
        }
    }
}

/// Text as the inside of a JSON string, escaped exactly as serde_json escapes it.
fn json_inside(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// A log line at `min` level or above (the level is its second word, as the logs write it).
pub type LineFilter = Box<dyn Fn(&str) -> bool + Send>;

/// What a text answer has read so far.
struct TextRead {
    file: Option<File>,
    /// Bytes of an incomplete character.
    pending: Vec<u8>,
    /// With a filter: the line read so far.
    line: String,
    filter: Option<LineFilter>,
    suffix: Option<&'static str>,
}

impl TextRead {
    /// The next piece of the answer's `log` string, or `None` at the end of the file.
    fn next_piece(&mut self) -> io::Result<Option<String>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf)?;
        let at_end = n == 0;
        self.pending.extend_from_slice(&buf[..n]);
        let text = take_text(&mut self.pending, at_end);
        let out = match &self.filter {
            None => text,
            Some(keep) => {
                self.line.push_str(&text);
                let mut kept = String::new();
                while let Some(end) = self.line.find('\n') {
                    let line: String = self.line.drain(..=end).collect();
                    let line = line.strip_suffix('\n').unwrap_or(&line);
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if keep(line) {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
                // The last line of a file that does not end with a newline counts too.
                if at_end && !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    if keep(&line) {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
                kept
            }
        };
        if at_end {
            self.file = None;
        }
        Ok(Some(out))
    }
}

/// The JSON answer `{execution, status, log}` with `file`'s text (every line, or those
/// `filter` keeps), byte for byte as serde_json writes a [`LogText`], read and sent a piece at
/// a time; `None` for the file: an empty log.
pub fn text_answer(
    execution: u64,
    status: Status,
    file: Option<File>,
    filter: Option<LineFilter>,
) -> Body {
    let empty = LogText {
        execution,
        status,
        log: String::new(),
    };
    let whole = serde_json::to_string(&empty).unwrap_or_default();
    // `log` is the last field: the answer is this up to its opening quote, the text, `"}`.
    let prefix = whole
        .strip_suffix("\"}")
        .filter(|p| p.ends_with("\"log\":\""))
        .unwrap_or(&whole)
        .to_string();
    let read = TextRead {
        file,
        pending: Vec::new(),
        line: String::new(),
        filter,
        suffix: Some("\"}"),
    };
    let pieces = stream::unfold((Some(prefix), read), |(prefix, mut read)| async move {
        if let Some(prefix) = prefix {
            return Some((Ok(Bytes::from(prefix)), (None, read)));
        }
        let (piece, read) =
            match tokio::task::spawn_blocking(move || (read.next_piece(), read)).await {
                Ok(done) => done,
                Err(e) => return Some((Err(io::Error::other(e)), (None, empty_read()))),
            };
        let mut read = read;
        match piece {
            Ok(Some(text)) => Some((Ok(Bytes::from(json_inside(&text))), (None, read))),
            Ok(None) => read
                .suffix
                .take()
                .map(|s| (Ok(Bytes::from_static(s.as_bytes())), (None, read))),
            Err(e) => Some((Err(e), (None, empty_read()))),
        }
    });
    Body::from_stream(pieces)
}

fn empty_read() -> TextRead {
    TextRead {
        file: None,
        pending: Vec::new(),
        line: String::new(),
        filter: None,
        suffix: None,
    }
}

/// Which events an answer keeps.
pub struct EventFilter {
    /// One node's.
    pub node: Option<String>,
    /// That level and above.
    pub min: Option<Level>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl EventFilter {
    fn keeps(&self, event: &Event) -> bool {
        self.node
            .as_deref()
            .is_none_or(|n| event.node.as_deref() == Some(n))
            && self.min.is_none_or(|min| event.level <= min)
    }
}

/// What an events answer has read so far.
struct EventsRead {
    reader: Option<io::BufReader<File>>,
    since: u64,
    last: u64,
    sent: usize,
    filter: EventFilter,
}

impl EventsRead {
    /// The next events as JSON, each preceded by a comma but the first; `None` at the end.
    fn next_piece(&mut self) -> Option<String> {
        let reader = self.reader.as_mut()?;
        let mut out = String::new();
        let mut line = String::new();
        while out.len() < CHUNK {
            if self.filter.limit.is_some_and(|limit| self.sent >= limit) {
                self.reader = None;
                break;
            }
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    self.reader = None;
                    break;
                }
                Ok(_) => {}
            }
            let Ok(event) = serde_json::from_str::<Event>(line.trim_end()) else {
                continue;
            };
            if event.seq <= self.since || !self.filter.keeps(&event) {
                continue;
            }
            if self.sent > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(&event).unwrap_or_default());
            self.sent += 1;
            self.last = event.seq;
        }
        if out.is_empty() && self.reader.is_none() {
            None
        } else {
            Some(out)
        }
    }
}

/// The JSON answer `{execution, status, events, last_seq}`: the events after `since` that
/// `filter` keeps, byte for byte as serde_json writes a [`LogEvents`], found by a binary search
/// and sent a piece at a time; `None` for the file: no events.
pub fn events_answer(
    execution: u64,
    status: Status,
    file: Option<File>,
    since: u64,
    filter: EventFilter,
) -> Body {
    let reader = file.and_then(|mut f| {
        let start = offset_after(&f, since);
        f.seek(SeekFrom::Start(start)).ok()?;
        Some(io::BufReader::with_capacity(64 * 1024, f))
    });
    let read = EventsRead {
        reader,
        since,
        last: since,
        sent: 0,
        filter,
    };
    let (prefix, _) = events_frame(execution, status, since);
    let pieces = stream::unfold(
        (Some(prefix), Some(read)),
        move |(prefix, read)| async move {
            if let Some(prefix) = prefix {
                return Some((Ok::<_, io::Error>(Bytes::from(prefix)), (None, read)));
            }
            let mut read = read?;
            let (piece, read) = tokio::task::spawn_blocking(move || (read.next_piece(), read))
                .await
                .ok()?;
            match piece {
                Some(events) => Some((Ok(Bytes::from(events)), (None, Some(read)))),
                None => {
                    let (_, suffix) = events_frame(execution, status, read.last);
                    Some((Ok(Bytes::from(suffix)), (None, None)))
                }
            }
        },
    );
    Body::from_stream(pieces)
}

/// An events answer without its events, split where they go: `events` comes before
/// `last_seq`, the last field.
fn events_frame(execution: u64, status: Status, last_seq: u64) -> (String, String) {
    let whole = serde_json::to_string(&LogEvents {
        execution,
        status,
        events: Vec::new(),
        last_seq,
    })
    .unwrap_or_default();
    const LIST: &str = "\"events\":[";
    match whole.find(LIST) {
        Some(i) => {
            let at = i + LIST.len();
            (whole[..at].to_string(), whole[at..].to_string())
        }
        None => (whole, String::new()),
    }
}

/// Opens a log file; `None` when it does not exist.
pub fn open(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dopc_client::api::EventKind;
    use futures_util::StreamExt;

    async fn collect(body: Body) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pieces = body.into_data_stream();
        while let Some(piece) = pieces.next().await {
            out.extend_from_slice(&piece.unwrap());
        }
        out
    }

    fn file_with(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> File {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        File::open(path).unwrap()
    }

    fn event(seq: u64, node: Option<&str>, level: Level, message: &str) -> Event {
        Event {
            seq,
            time_ms: 1_000 + seq,
            level,
            kind: EventKind::Message,
            node: node.map(str::to_string),
            step: None,
            message: message.to_string(),
            fields: serde_json::Map::new(),
        }
    }

    /// Text that spans many pieces, with what JSON escapes and characters of several bytes
    /// across piece boundaries.
    fn tricky_text() -> String {
        let mut text = String::new();
        let mut n = 0;
        while text.len() < 3 * CHUNK {
            let level = ["INFO", "WARN", "ERROR", "DEBUG"][n % 4];
            text.push_str(&format!(
                "2026-12-07T00:00:00Z {level} web{n}: \"quoted\" back\\slash tab\t ctl\u{1} é € 🦀\r\n"
            ));
            n += 1;
        }
        text.push_str("2026-12-07T00:00:00Z ERROR the last line has no newline");
        text
    }

    #[tokio::test]
    async fn a_streamed_text_answer_is_byte_for_byte_what_serde_writes() {
        let dir = tempfile::tempdir().unwrap();
        let text = tricky_text();
        let file = file_with(&dir, "all.log", text.as_bytes());
        let streamed = collect(text_answer(7, Status::Done, Some(file), None)).await;
        let whole = serde_json::to_vec(&LogText {
            execution: 7,
            status: Status::Done,
            log: text.clone(),
        })
        .unwrap();
        assert!(streamed == whole, "the streamed answer differs");

        // Filtered by level: the lines `str::lines` gives, each with a newline.
        let keep: LineFilter =
            Box::new(|line: &str| matches!(line.split_whitespace().nth(1), Some("ERROR" | "WARN")));
        let file = file_with(&dir, "all.log", text.as_bytes());
        let streamed = collect(text_answer(7, Status::Running, Some(file), Some(keep))).await;
        let kept: String = text
            .lines()
            .filter(|l| matches!(l.split_whitespace().nth(1), Some("ERROR" | "WARN")))
            .map(|l| format!("{l}\n"))
            .collect();
        let whole = serde_json::to_vec(&LogText {
            execution: 7,
            status: Status::Running,
            log: kept,
        })
        .unwrap();
        assert!(streamed == whole, "the filtered answer differs");

        let empty = collect(text_answer(7, Status::Queued, None, None)).await;
        let whole = serde_json::to_vec(&LogText {
            execution: 7,
            status: Status::Queued,
            log: String::new(),
        })
        .unwrap();
        assert_eq!(empty, whole);
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_a_lossy_read_would() {
        let bytes = b"ok \xff then \xe2\x82".to_vec();
        let mut pending = bytes.clone();
        let first = take_text(&mut pending, false);
        assert_eq!(first, "ok \u{fffd} then ");
        assert_eq!(pending, b"\xe2\x82", "an incomplete character waits");
        pending.push(0xac);
        assert_eq!(take_text(&mut pending, false), "€");
        let mut cut = b"end \xe2\x82".to_vec();
        assert_eq!(
            take_text(&mut cut, true),
            String::from_utf8_lossy(b"end \xe2\x82")
        );
    }

    fn events_file(dir: &tempfile::TempDir, count: u64) -> (File, Vec<Event>) {
        let events: Vec<Event> = (1..=count)
            .map(|seq| {
                let node = ["web1", "web2", "db"][(seq % 3) as usize];
                let level = if seq % 5 == 0 {
                    Level::Error
                } else {
                    Level::Info
                };
                // Lines of different lengths, some long, so the search lands mid-line.
                let message = "x".repeat((seq * 37 % 700) as usize);
                event(seq, Some(node), level, &message)
            })
            .collect();
        let mut text = String::new();
        for e in &events {
            text.push_str(&serde_json::to_string(e).unwrap());
            text.push('\n');
        }
        (file_with(dir, "events.jsonl", text.as_bytes()), events)
    }

    #[test]
    fn the_search_lands_before_the_first_newer_event_and_near_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = events_file(&dir, 5_000);
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let starts: Vec<(u64, u64)> = {
            let mut at = 0u64;
            text.lines()
                .map(|l| {
                    let start = at;
                    at += l.len() as u64 + 1;
                    (start, seq_of(l).unwrap())
                })
                .collect()
        };
        for since in [0, 1, 2, 17, 999, 2_500, 4_999, 5_000, 9_999] {
            let offset = offset_after(&file, since);
            let (start, seq) = *starts
                .iter()
                .find(|(start, _)| *start >= offset)
                .unwrap_or(&(text.len() as u64, u64::MAX));
            assert_eq!(start, offset, "since {since}: a line start");
            assert!(seq == u64::MAX || seq <= since + 1, "since {since}: {seq}");
            let first_newer = starts
                .iter()
                .find(|(_, s)| *s > since)
                .map_or(text.len() as u64, |(start, _)| *start);
            assert!(
                offset <= first_newer,
                "since {since}: past the first newer event"
            );
            assert!(
                first_newer - offset <= 2 * SEARCH_WINDOW,
                "since {since}: {} bytes to read forward",
                first_newer - offset
            );
        }
    }

    #[tokio::test]
    async fn a_streamed_events_answer_is_what_serde_writes_for_exactly_the_events_after() {
        let dir = tempfile::tempdir().unwrap();
        let (_, events) = events_file(&dir, 3_000);
        let path = dir.path().join("events.jsonl");
        // since, node, level, limit
        type Case<'a> = (u64, Option<&'a str>, Option<Level>, Option<usize>);
        let cases: Vec<Case> = vec![
            (0, None, None, None),
            (1_234, None, None, None),
            (2_999, Some("db"), Some(Level::Error), None),
            (100, Some("web1"), None, Some(10)),
            (3_000, None, None, None),
            (5_000, None, None, Some(3)),
        ];
        for (since, node, min, limit) in cases {
            let filter = EventFilter {
                node: node.map(str::to_string),
                min,
                limit,
            };
            let file = File::open(&path).unwrap();
            let streamed = collect(events_answer(3, Status::Done, Some(file), since, filter)).await;
            let mut expected: Vec<Event> = events
                .iter()
                .filter(|e| e.seq > since)
                .filter(|e| node.is_none_or(|n| e.node.as_deref() == Some(n)))
                .filter(|e| min.is_none_or(|m| e.level <= m))
                .cloned()
                .collect();
            if let Some(limit) = limit {
                expected.truncate(limit);
            }
            let last_seq = expected.last().map_or(since, |e| e.seq);
            let whole = serde_json::to_vec(&LogEvents {
                execution: 3,
                status: Status::Done,
                events: expected,
                last_seq,
            })
            .unwrap();
            assert!(
                streamed == whole,
                "since {since} node {node:?} min {min:?} limit {limit:?}: differs"
            );
        }
        let none = collect(events_answer(
            3,
            Status::New,
            None,
            4,
            EventFilter {
                node: None,
                min: None,
                limit: None,
            },
        ))
        .await;
        assert_eq!(
            none,
            br#"{"execution":3,"status":"new","events":[],"last_seq":4}"#
        );
    }
}
