//! This node's role in the pair, as keepalived reports it on the notify FIFO, and the
//! track file through which lb tells keepalived whether this node may be master.
//!
//! keepalived writes one line per state change, for instance
//! `INSTANCE "lb" MASTER 150` (`INSTANCE|GROUP`, the quoted name, the new state, the
//! priority). States are MASTER, BACKUP, FAULT, STOP (keepalived stopping the instance),
//! DELETED (removed at a reload), and, when it applies, MASTER_RX_LOWER_PRI and
//! MASTER_PRIORITY/BACKUP_PRIORITY. Only INSTANCE lines count: lb's config has one
//! instance and no sync group.

use std::{
    io::Write as _,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::{io::AsyncBufReadExt as _, sync::watch};

/// What this node is in the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// keepalived has not reported a state yet.
    Starting,
    Backup,
    /// This node holds the floating addresses.
    Master,
    /// keepalived holds this node out (lb not ready, a tracked link down, or the instance
    /// stopped).
    Fault,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Backup => "backup",
            Role::Master => "master",
            Role::Fault => "fault",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role an `INSTANCE` line of keepalived's notify FIFO reports; `None` for GROUP lines
/// and anything else. STOP and DELETED (the instance no longer runs) are [`Role::Fault`]:
/// the node holds no floating address.
pub fn parse_notify_line(line: &str) -> Option<Role> {
    let rest = line.trim().strip_prefix("INSTANCE")?;
    let rest = rest.trim_start().strip_prefix('"')?;
    let (_name, rest) = rest.split_once('"')?;
    let state = rest.split_whitespace().next()?;
    Some(match state {
        "MASTER" | "MASTER_RX_LOWER_PRI" | "MASTER_PRIORITY" => Role::Master,
        "BACKUP" | "BACKUP_PRIORITY" => Role::Backup,
        "FAULT" | "STOP" | "DELETED" => Role::Fault,
        _ => return None,
    })
}

/// Create the FIFO at `path` (and its parent directories) unless it exists, and follow it
/// on a tokio task for as long as the runtime runs: every INSTANCE line updates the role
/// the receiver sees, which starts at [`Role::Starting`]. When keepalived closes the FIFO
/// (it stopped or restarts) the FIFO is opened again and waits for the next writer; the
/// role stays as last reported. Call within a tokio runtime.
pub fn follow_notify_fifo(path: PathBuf) -> Result<watch::Receiver<Role>> {
    ensure_fifo(&path)?;
    let first = open_fifo(&path)?;
    let (tx, rx) = watch::channel(Role::Starting);
    tokio::spawn(async move {
        let mut receiver = Some(first);
        loop {
            let pipe = match receiver.take() {
                Some(p) => p,
                // keepalived removes a FIFO it created itself when it stops.
                None => match ensure_fifo(&path).and_then(|()| open_fifo(&path)) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(fifo = %path.display(), "cannot reopen keepalived's notify FIFO: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(role) = parse_notify_line(&line) {
                            tracing::info!(role = role.as_str(), line = %line.trim(), "keepalived reports");
                            tx.send_replace(role);
                        } else {
                            tracing::debug!(line = %line.trim(), "keepalived notify line ignored");
                        }
                    }
                    // EOF: the writer closed. A fresh open waits for the next one.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(fifo = %path.display(), "reading keepalived's notify FIFO: {e}");
                        break;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Make sure `path` is a FIFO: create it (and its parents) if nothing is there, refuse
/// anything else.
fn ensure_fifo(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => Ok(()),
        Ok(meta) => bail!(
            "{} exists and is not a FIFO (it is a {}): remove it, lb creates keepalived's notify FIFO there",
            path.display(),
            if meta.is_dir() { "directory" } else { "file" }
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => ensure_exists_as_fifo(path),
                Err(e) => Err(e).with_context(|| format!("mkfifo {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

fn ensure_exists_as_fifo(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_fifo() {
        bail!("{} is not a FIFO", path.display());
    }
    Ok(())
}

/// Open the FIFO for reading without blocking: until a writer comes, reads wait (a fresh
/// reader sees no hang-up before its first writer).
fn open_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .with_context(|| format!("opening keepalived's notify FIFO {}", path.display()))
}

/// The file keepalived tracks (`track_file`, weight 0): "0" means this node's lb is ready to
/// be master, anything else holds it in FAULT. keepalived's heartbeat script also wants it
/// rewritten every second (see [`super::keepalived`]).
pub struct TrackFile {
    path: PathBuf,
}

impl TrackFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TrackFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write "0\n" (healthy) or "1\n", atomically: a temporary file in the same directory,
    /// renamed over the track file, so keepalived never reads a partial value.
    pub fn write(&self, healthy: bool) -> std::io::Result<()> {
        let name = self
            .path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the track file path has no file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = self.path.with_file_name(tmp_name);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(if healthy { b"0\n" } else { b"1\n" })?;
            f.flush()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_lines_report_the_role_and_others_are_ignored() {
        assert_eq!(
            parse_notify_line("INSTANCE \"lb\" MASTER 150"),
            Some(Role::Master)
        );
        assert_eq!(
            parse_notify_line("INSTANCE \"lb\" BACKUP 100\n"),
            Some(Role::Backup)
        );
        assert_eq!(
            parse_notify_line("INSTANCE \"lb\" FAULT 0"),
            Some(Role::Fault)
        );
        assert_eq!(
            parse_notify_line("INSTANCE \"lb\" STOP 0"),
            Some(Role::Fault)
        );
        assert_eq!(
            parse_notify_line("INSTANCE \"a name\" MASTER_RX_LOWER_PRI 150"),
            Some(Role::Master)
        );
        assert_eq!(parse_notify_line("GROUP \"g\" MASTER 0"), None);
        assert_eq!(parse_notify_line("INSTANCE \"lb\" UNKNOWN 1"), None);
        assert_eq!(parse_notify_line("INSTANCE lb MASTER 150"), None);
        assert_eq!(parse_notify_line(""), None);
        assert_eq!(Role::Master.as_str(), "master");
        assert_eq!(serde_json::to_string(&Role::Fault).unwrap(), "\"fault\"");
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-role-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_fifo_is_created_and_followed_across_writers() {
        let dir = scratch("fifo");
        let path = dir.join("sub/keepalived.fifo");
        let mut role = follow_notify_fifo(path.clone()).unwrap();
        assert_eq!(*role.borrow(), Role::Starting);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let write = |text: &'static str| {
            let path = path.clone();
            // A writer that opens, writes and closes, as a keepalived that stops would.
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.write_all(text.as_bytes()).unwrap();
            })
        };
        let wait = |role: &mut watch::Receiver<Role>, want: Role| {
            let mut role = role.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), role.wait_for(|r| *r == want))
                    .await
                    .expect("the role in time")
                    .map(|r| *r)
                    .unwrap()
            }
        };
        write("GROUP \"g\" FAULT 0\nINSTANCE \"lb\" BACKUP 100\n")
            .await
            .unwrap();
        assert_eq!(wait(&mut role, Role::Backup).await, Role::Backup);
        // The next writer, after the first closed: the follower reopened.
        write("INSTANCE \"lb\" MASTER 150\n").await.unwrap();
        assert_eq!(wait(&mut role, Role::Master).await, Role::Master);
        write("INSTANCE \"lb\" FAULT 150\n").await.unwrap();
        assert_eq!(wait(&mut role, Role::Fault).await, Role::Fault);
        // Existing FIFO: following it again is fine.
        drop(follow_notify_fifo(path.clone()).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_regular_file_in_the_fifos_place_is_refused() {
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keepalived.fifo");
        std::fs::write(&path, "x").unwrap();
        let e = follow_notify_fifo(path).unwrap_err();
        assert!(format!("{e:#}").contains("is not a FIFO"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_track_file_is_replaced_whole() {
        let dir = scratch("track");
        std::fs::create_dir_all(&dir).unwrap();
        let track = TrackFile::new(dir.join("track"));
        track.write(true).unwrap();
        assert_eq!(std::fs::read_to_string(track.path()).unwrap(), "0\n");
        track.write(false).unwrap();
        assert_eq!(std::fs::read_to_string(track.path()).unwrap(), "1\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
