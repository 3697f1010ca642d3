//! `wsflow new`: create a flow crate and say how to run it.

use crate::scaffold::{self, NewFlow};

/// Create the crate `new` describes and print the next steps.
pub(super) fn run(new: &NewFlow) -> anyhow::Result<()> {
    let created = scaffold::create(new)?;
    let dir = new.dir.display();
    println!(
        "created {dir}: flow `{}` ({} mode, {} messages), with {}",
        created.name, new.mode, new.format, created.sdk
    );
    println!("next: cd {dir} && wsflow up");
    println!(
        "then connect to ws://127.0.0.1:9998{} (WSFLOW_PROP_PORT=N serves on port N)",
        created.path
    );
    Ok(())
}
