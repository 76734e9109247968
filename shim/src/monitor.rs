//! The shim's life after start: log pumping, reaping, and the control socket.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use vpnhop::container::{self, ShimStdio};
use vpnhop::criu::Criu;
use vpnhop::proc;
use vpnhop::shim::{Request, Response};
use vpnhop::state::{Status, Store};

/// The exit code of the container's init, once known.
#[derive(Debug, Default)]
struct Exit {
    code: Mutex<Option<i32>>,
    changed: Condvar,
}

impl Exit {
    fn set(&self, code: i32) {
        if let Ok(mut slot) = self.code.lock() {
            *slot = Some(code);
        }
        self.changed.notify_all();
    }

    fn get(&self) -> Option<i32> {
        self.code.lock().ok().and_then(|c| *c)
    }

    /// Waits up to `timeout` for the init to exit.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let guard = self.code.lock().ok()?;
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |c| c.is_none())
            .ok()?;
        *guard
    }
}

/// The shim's monitor of one container.
#[derive(Debug)]
pub struct Monitor {
    store: Store,
    name: String,
    pid: i32,
    stdio: ShimStdio,
    exit: Arc<Exit>,
    checkpointed: Option<PathBuf>,
    /// A checkpointed container whose host side is to be removed after answering.
    teardown: Option<vpnhop::state::ContainerState>,
}

impl Monitor {
    /// A monitor for the container `name` whose init is `pid`.
    pub fn new(store: Store, name: String, pid: i32, stdio: ShimStdio) -> Self {
        Monitor {
            store,
            name,
            pid,
            stdio,
            exit: Arc::default(),
            checkpointed: None,
            teardown: None,
        }
    }

    /// Serves until the container's init has exited, then records its end and returns.
    pub fn run(mut self) {
        let exit = Arc::clone(&self.exit);
        let pid = self.pid;
        thread::spawn(move || reap(pid, &exit));

        let pumps = self.start_pumps();
        if let Err(err) = self.serve() {
            tracing::error!(container = %self.name, "control socket: {err}");
            // Without a socket nobody can reach us; keep reaping so the exit is still recorded.
            self.exit.wait(Duration::MAX);
        }

        self.finish();
        for pump in pumps {
            let _ = pump.join();
        }
    }

    fn start_pumps(&self) -> Vec<thread::JoinHandle<()>> {
        let path = self.store.container_log(&self.name);
        let log = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Arc::new(Mutex::new(file)),
            Err(err) => {
                tracing::error!(log = %path.display(), "container log: {err}");
                return Vec::new();
            }
        };

        [&self.stdio.stdout, &self.stdio.stderr]
            .into_iter()
            .filter_map(|fd| fd.try_clone().ok())
            .map(|fd| {
                let log = Arc::clone(&log);
                thread::spawn(move || pump(fd, &log))
            })
            .collect()
    }

    fn serve(&mut self) -> io::Result<()> {
        let path = self.store.socket(&self.name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let bound = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();

        while self.exit.get().is_none() {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(errno) => return Err(errno.into()),
            }

            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(err) = self.handle(stream) {
                        tracing::warn!(container = %self.name, "client: {err}");
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }

        // Only our own socket: after a simulated reboot (the state root wiped while this shim
        // was tearing down), the path may already belong to the shim of the restored container.
        let current = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        if current.is_some() && current == bound {
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }

    fn handle(&mut self, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;

        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => self.answer(request),
            Err(err) => Response::Error {
                message: format!("malformed request: {err}"),
            },
        };
        let mut text = serde_json::to_string(&response).map_err(io::Error::other)?;
        text.push('\n');
        let written = (&stream).write_all(text.as_bytes());
        drop(stream);

        // After a checkpoint the client has its answer; the host side is removed now, out of
        // the time a reboot waits for.
        if let Some(state) = self.teardown.take() {
            self.exit.wait(Duration::from_secs(30));
            if let Err(err) = container::teardown_after_exit(&state) {
                tracing::warn!(container = %self.name, "host teardown after checkpoint: {err:#}");
            }
        }
        written
    }

    fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => match self.exit.get() {
                Some(exit_code) => Response::Exited { exit_code },
                None => Response::Running { pid: self.pid },
            },
            Request::Stop { timeout_secs } => self.stop(Duration::from_secs(timeout_secs)),
            Request::Checkpoint {
                criu,
                image_dir,
                leave_running,
            } => match self.checkpoint(&criu, &image_dir, leave_running) {
                Ok(response) => response,
                Err(err) => Response::Error {
                    message: vpnhop::error_chain(&err),
                },
            },
        }
    }

    fn stop(&self, grace: Duration) -> Response {
        let pid = Pid::from_raw(self.pid);

        if self.exit.get().is_none() {
            let _ = kill(pid, Signal::SIGTERM);
            if self.exit.wait(grace).is_none() {
                tracing::info!(container = %self.name, "grace period over, sending SIGKILL");
                let _ = kill(pid, Signal::SIGKILL);
            }
        }

        match self.exit.wait(Duration::from_secs(30)) {
            Some(exit_code) => {
                tracing::info!(container = %self.name, exit_code, "container stopped");
                Response::Exited { exit_code }
            }
            None => Response::Error {
                message: format!("container `{}` (pid {}) did not exit", self.name, self.pid),
            },
        }
    }

    fn checkpoint(
        &mut self,
        criu: &std::path::Path,
        image_dir: &std::path::Path,
        leave_running: bool,
    ) -> Result<Response, container::ContainerError> {
        if self.exit.get().is_some() {
            return Err(container::ContainerError::NotRunning(self.name.clone()));
        }
        let criu = Criu::locate(criu)?;
        let mut state = self.store.load(&self.name)?;

        let stats = container::checkpoint(&self.store, &state, &criu, image_dir, leave_running)?;

        state.checkpoint = Some(image_dir.to_path_buf());
        if !leave_running {
            // CRIU left the tree stopped; the images are sealed, so it can go. Its exit (the
            // tun device closes then, which takes a while) and its host side are waited for once
            // the answer is out (see `handle`): a process with SIGKILL pending already counts
            // as gone for a restore that follows at once.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            state.status = Status::Checkpointed;
            self.checkpointed = Some(image_dir.to_path_buf());
            self.teardown = Some(state.clone());
        }
        self.store.save(&state)?;
        Ok(Response::Checkpointed {
            image_dir: image_dir.to_path_buf(),
            stats,
        })
    }

    /// Records how the container ended.
    fn finish(&self) {
        let Ok(mut state) = self.store.load(&self.name) else {
            return;
        };
        // The state root may have been wiped and the name restored by another shim meanwhile:
        // its state is not ours to write.
        if state.shim_pid != Some(std::process::id() as i32) {
            tracing::info!(container = %self.name, "state belongs to another shim now; left alone");
            return;
        }

        state.finished = Some(chrono::Utc::now());
        state.exit_code = self.exit.get();
        state.status = match &self.checkpointed {
            Some(_) => Status::Checkpointed,
            None => Status::Stopped,
        };
        if let Err(err) = self.store.save(&state) {
            tracing::error!(container = %self.name, "recording exit: {err}");
        }
        tracing::info!(container = %self.name, status = %state.status, exit_code = ?state.exit_code, "shim exiting");
    }
}

/// Waits for the init to exit. `__WALL` also sees a child whose exit signal is not SIGCHLD: the
/// init is cloned with CLONE_PARENT (it inherits the exit signal of libcontainer's intermediate
/// process) or created by CRIU, and neither is ours to choose.
fn reap(pid: i32, exit: &Exit) {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return exit.set(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return exit.set(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => {
                // Not our child (should not happen): fall back to watching the pid.
                tracing::warn!(pid, "waitpid: {errno}; polling instead");
                while proc::is_alive(pid, None) && !proc::is_zombie(pid) {
                    thread::sleep(Duration::from_millis(50));
                }
                return exit.set(255);
            }
        }
    }
}

/// Copies one of the container's output pipes into its log until the container closes it.
fn pump(fd: OwnedFd, log: &Mutex<File>) {
    let mut src = File::from(fd);
    let mut buf = [0u8; 8192];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Ok(mut file) = log.lock() {
                    let _ = file.write_all(&buf[..n]);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
