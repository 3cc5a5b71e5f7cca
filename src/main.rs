mod cli;

use std::process::ExitCode;

/// Large buffers start on a cache line (see `resnet::engine::alloc`).
#[global_allocator]
static ALLOCATOR: resnet::engine::alloc::CacheLineAlloc = resnet::engine::alloc::CacheLineAlloc;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `resnet info resnet110 | head -1` would make println! panic
    // on the closed pipe. Restore the default, as other command-line tools behave: the
    // process ends quietly when its reader goes away.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
