//! `service::main` under SIGTERM: the service's main task gets `service.shutdown_timeout_ms`
//! once a signal asks it to stop, and no more. No Kafka or Cassandra needed.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tickflow_shared::config::{Problems, ServiceConfig, Validate};
use tickflow_shared::service::{self, CommonArgs, ServiceRoot};

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Root {
    service: ServiceConfig,
}

impl Validate for Root {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
    }
}

impl ServiceRoot for Root {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }
    fn service_mut(&mut self) -> &mut ServiceConfig {
        &mut self.service
    }
}

fn sigterm_self() {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// One test in this binary: the signal goes to the whole process.
#[test]
fn a_main_task_that_ignores_sigterm_is_dropped_at_the_deadline() {
    // Registered before anything else, so the SIGTERM below can never take the default action
    // and end the test process (tokio keeps a handler registered once it is).
    let guard = tokio::runtime::Runtime::new().unwrap();
    let _registered = guard.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap()
    });
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[service]\nshutdown_timeout_ms = 1500").unwrap();
    let args = CommonArgs {
        config: Some(file.path().to_path_buf()),
        log_format: None,
        check_config: false,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // On a thread of its own, so a `main` that never returns fails this test instead of hanging it.
    std::thread::spawn(move || {
        let code = service::main::<Root, _, _>(
            "shutdown-test",
            args,
            move |_config, shutdown| async move {
                // Give the service's signal handler time to be polled, then ask it to stop.
                tokio::time::sleep(Duration::from_millis(500)).await;
                sigterm_self();
                shutdown.triggered().await;
                tx.send(Instant::now()).unwrap();
                // What the hang looked like: a wait on something that never answers, which no
                // longer listens to the shutdown.
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        done_tx.send((code, Instant::now())).unwrap();
    });
    let triggered = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the main task saw the shutdown");
    let (code, returned) = done_rx
        .recv_timeout(Duration::from_secs(4))
        .expect("service::main returned within the 1.5 s deadline (waited 4 s)");
    assert_eq!(code, ExitCode::SUCCESS);
    let took = returned - triggered;
    assert!(
        took >= Duration::from_millis(1400),
        "main returned {took:?} after the signal, before the 1.5 s deadline"
    );
}
