//! Placeholder until the CLI lands.
use crate::config::Config;
use std::ffi::OsString;
pub enum Invocation {
    Run(Box<Config>),
    Help,
    Version,
}
pub struct CliError {
    pub show_usage: bool,
}
impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "error")
    }
}
pub fn parse<I, T>(_args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Err(CliError { show_usage: true })
}
pub fn usage() -> String {
    String::new()
}
pub fn version_text() -> String {
    String::new()
}
