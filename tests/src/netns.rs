//! Named network namespaces that are removed on drop, even when a test panics.

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};

/// Run a command, failing with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace owned by this process.
pub struct NetNs {
    pub name: String,
    children: Mutex<Vec<Child>>,
}

impl NetNs {
    pub fn new(name: &str) -> Result<Self> {
        // A namespace left by a killed run of the same name would make `add` fail.
        let _ = sh(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            children: Mutex::new(Vec::new()),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Run a command inside the namespace and wait for it.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Start a long-running command inside the namespace; it is stopped when the namespace
    /// is dropped, or by [`NetNs::stop`].
    pub fn spawn(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", self.name))?;
        Ok(self.adopt(child))
    }

    /// Take ownership of a child started elsewhere: it is killed with the namespace.
    /// Returns its pid, for [`NetNs::stop`].
    pub fn adopt(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Stop one child started in this namespace (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(i);
            terminate(&mut child);
        }
    }

    /// Run `f` on a thread that has entered this namespace; sockets it opens live there.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        Ok(std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the test namespace");
            f()
        }))
    }

    /// Stop every process started in the namespace (SIGTERM, then SIGKILL).
    pub fn stop_children(&self) {
        let mut children = self.children.lock().unwrap();
        for mut child in children.drain(..) {
            terminate(&mut child);
        }
    }
}

/// SIGTERM (so lb detaches XDP cleanly), then SIGKILL if it has not exited within 5 s.
fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exited = crate::wait_until(
        "a child to exit after SIGTERM",
        std::time::Duration::from_secs(5),
        || Ok(child.try_wait()?.map(|_| ())),
    );
    if exited.is_ok() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.stop_children();
        // Deleting the namespace destroys its veth ends (and their peers elsewhere).
        if let Err(e) = sh(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: could not remove namespace {}: {e}", self.name);
        }
    }
}
