//! The terminal UI (in progress).
use crate::engine::EngineHandle;
use anyhow::Result;

pub fn run(handle: EngineHandle) -> Result<i32> {
    Ok(crate::headless::run(handle))
}
