//! Source `command`: any program's standard output (mysqldump, a tar of
//! files…). The program runs without a shell.
use serde::Deserialize;

use super::Running;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    /// Program and arguments, e.g. `["mysqldump", "--single-transaction", "app"]`.
    pub command: Vec<String>,
}

impl CommandSource {
    pub fn start(&self) -> anyhow::Result<Running> {
        let (prog, args) = self.command.split_first().ok_or_else(|| anyhow::anyhow!("source.command is empty"))?;
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args);
        Running::spawn(cmd, format!("command {prog:?}"))
    }
}
