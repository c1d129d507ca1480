//! Reading the settings: the TOML file, the `UDP_RELAY_…` environment and the flags, in that
//! order of strength, each value through its flag's parser and an error naming its source; the
//! subcommands; what a reload changes; the effective configuration as TOML.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use super::Args;

/// Where the value in force of a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default (or unset, where there is none).
    Default,
    /// The configuration file, at this line.
    File(PathBuf, usize),
    /// This environment variable.
    Env(String),
    /// This flag on the command line.
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path, line) => write!(f, "file {} line {line}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(long) => write!(f, "flag --{long}"),
        }
    }
}

/// One setting as loaded.
#[derive(Debug, Clone)]
pub struct Setting {
    /// Its key in the file (the flag's long name in snake_case).
    pub key: String,
    /// The first line of its help.
    pub help: String,
    /// Whether it is an on/off switch (a flag without a value).
    pub switch: bool,
    /// The value in force as the flag would take it (`None`: unset).
    pub value: Option<String>,
    /// Where the value came from.
    pub source: Source,
}

/// The effective configuration: the settings in force and where each came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings, parsed and checked.
    pub args: Args,
    /// Every file key, in the order of `--help`.
    pub settings: Vec<Setting>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the relay.
    Run(Box<Loaded>),
    /// Check the configuration, bind nothing, exit.
    CheckConfig(Box<Loaded>),
    /// Print the configuration as TOML and exit.
    PrintConfig(Box<Loaded>),
    /// Print completions for this shell and exit.
    Completions(clap_complete::Shell),
    /// Print the man page and exit.
    Man,
}

/// Arguments of clap's own that are no setting.
fn is_setting(a: &Arg) -> bool {
    !matches!(a.get_id().as_str(), "help" | "version")
}

/// The flags without clap's reading of the environment: the variables are read apart so that a
/// bad value is reported under the variable's name, not the flag's. The help still names them.
fn flags() -> Command {
    Args::command().mut_args(|a| {
        let Some(var) = a.get_env().map(|v| v.to_string_lossy().into_owned()) else {
            return a;
        };
        let help = a.get_help().map(ToString::to_string).unwrap_or_default();
        a.env(None).help(format!("{help} [env: {var}]"))
    })
}

/// The whole command line: the relay's flags, and the subcommands (which take the same flags).
pub fn command() -> Command {
    let base = flags();
    let settings: Vec<Arg> = base
        .get_arguments()
        .filter(|a| is_setting(a))
        .cloned()
        .collect();
    base.args_conflicts_with_subcommands(true)
        .subcommand(
            Command::new("check-config")
                .about("Check the effective configuration (file, environment, flags); bind nothing")
                .args(settings.clone()),
        )
        .subcommand(
            Command::new("print-config")
                .about("Print the effective configuration as TOML, each value with its source")
                .args(settings),
        )
        .subcommand(
            Command::new("completions")
                .about("Print shell completions")
                .arg(
                    Arg::new("shell")
                        .required(true)
                        .value_parser(clap::value_parser!(clap_complete::Shell)),
                ),
        )
        .subcommand(Command::new("man").about("Print the man page (roff)"))
}

/// The `UDP_RELAY_…` variables of this process, as at start (a reload reads these again, not the
/// environment of the moment, which nobody can change from outside).
pub fn environment() -> Vec<(String, OsString)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with("UDP_RELAY_").then_some((k, v))
        })
        .collect()
}

/// Reads the command line, the environment and the file `--config` (or `UDP_RELAY_CONFIG`)
/// names; exits with a message naming the flag, the variable or the file's key and line on error.
pub fn invocation() -> Invocation {
    let m = command()
        .try_get_matches_from(std::env::args_os())
        .unwrap_or_else(|e| e.exit());
    let env = environment();
    let loaded = match m.subcommand() {
        Some(("check-config", sub)) => load(sub, &env).map(|l| Invocation::CheckConfig(l.into())),
        Some(("print-config", sub)) => load(sub, &env).map(|l| Invocation::PrintConfig(l.into())),
        Some(("completions", sub)) => {
            let shell = sub.get_one("shell").copied().expect("a required argument");
            return Invocation::Completions(shell);
        }
        Some(("man", _)) => return Invocation::Man,
        _ => load(&m, &env).map(|l| Invocation::Run(l.into())),
    };
    loaded.unwrap_or_else(|msg| {
        flags()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit()
    })
}

/// Reads the configuration again as at start (the same command line, the environment as it was
/// then, the file as it is now), for a reload.
pub fn reread(env: &[(String, OsString)]) -> Result<Loaded, String> {
    let m = command()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| message(&e))?;
    match m.subcommand() {
        Some((_, sub)) => load(sub, env),
        None => load(&m, env),
    }
}

/// Parses the settings: flags over `env` over the file over the defaults.
pub fn load(m: &ArgMatches, env: &[(String, OsString)]) -> Result<Loaded, String> {
    let base = flags();
    let defs = Args::command();
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = if m.value_source("config") == Some(ValueSource::CommandLine) {
        m.get_one::<PathBuf>("config").cloned()
    } else {
        var("UDP_RELAY_CONFIG").map(PathBuf::from)
    };
    let mut file = match &config {
        Some(path) => read_file(path, &base)?,
        None => Vec::new(),
    };
    let mut argv: Vec<OsString> = vec!["udp-relay".into()];
    let mut settings = Vec::new();
    for arg in defs.get_arguments().filter(|a| is_setting(a)) {
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let env_name = arg.get_env().map(|v| v.to_string_lossy().into_owned());
        let from_env = env_name.as_deref().and_then(var);
        let (value, source) = if m.value_source(id) == Some(ValueSource::CommandLine) {
            // A flag given several times (the address ranges) is their comma-separated list.
            let raw = if switch {
                Some("true".into())
            } else {
                m.get_raw(id).map(|r| {
                    r.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
            };
            (raw, Source::Flag(long.to_string()))
        } else if let (Some(name), Some(v)) = (&env_name, from_env) {
            let v = v
                .into_string()
                .map_err(|v| format!("{name}={v:?} is not UTF-8"))?;
            let v = if switch {
                switch_value(&v).ok_or_else(|| {
                    format!("{name}={v:?} is not a boolean (1/0, true/false, yes/no, on/off)")
                })?
            } else {
                check_value(&base, long, &v, name)?;
                v
            };
            (Some(v), Source::Env(name.clone()))
        } else if let Some(i) = file.iter().position(|f| f.key == id) {
            let f = file.swap_remove(i);
            (f.value, f.source)
        } else {
            let default = arg.get_default_values().first();
            let default = default.map(|v| v.to_string_lossy().into_owned());
            // A switch not given is off.
            let default = default.or_else(|| switch.then(|| "false".to_string()));
            (default, Source::Default)
        };
        match &value {
            Some(v) if switch && v == "true" => argv.push(format!("--{long}").into()),
            Some(_) if switch => {}
            Some(v) => argv.push(format!("--{long}={v}").into()),
            None => {}
        }
        if id != "config" {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            settings.push(Setting {
                key: id.to_string(),
                help: help.lines().next().unwrap_or_default().to_string(),
                switch,
                value,
                source,
            });
        }
    }
    let matches = base.try_get_matches_from(argv).map_err(|e| message(&e))?;
    let args = Args::from_arg_matches(&matches).map_err(|e| message(&e))?;
    args.check()?;
    Ok(Loaded { args, settings })
}

/// `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` as `true` or `false`.
fn switch_value(v: &str) -> Option<String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some("true".into()),
        "0" | "false" | "no" | "off" | "" => Some("false".into()),
        _ => None,
    }
}

/// Runs the flag's own parser on `value`; on error, the message names `name` instead of the flag.
fn check_value(base: &Command, long: &str, value: &str, name: &str) -> Result<(), String> {
    match base
        .clone()
        .try_get_matches_from(["udp-relay".to_string(), format!("--{long}={value}")])
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = message(&e);
            // clap names the flag as `'--port <PORT>'`.
            let flag = format!("'--{long}");
            Err(match msg.find(&flag) {
                Some(at) => {
                    let end = msg[at + 1..].find('\'').map_or(msg.len(), |e| at + e + 2);
                    format!("{}{name}{}", &msg[..at], &msg[end..])
                }
                None => format!("{name}: {msg}"),
            })
        }
    }
}

/// A clap error's message without its `error:` prefix and its hint to try `--help`.
fn message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim_start_matches("error: ");
    text.split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Reads the settings of a TOML file, each checked by its flag's parser.
fn read_file(path: &Path, base: &Command) -> Result<Vec<Setting>, String> {
    let p = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {p}: {e}"))?;
    type Spanned<T> = toml::Spanned<T>;
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| format!("{p}: {e}"))?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (key, value) in table {
        let n = line(key.span().start);
        let key = key.into_inner();
        let Some(arg) = base
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && is_setting(a) && key != "config")
        else {
            let hint = key.replace('-', "_");
            let hint = if hint != key && base.get_arguments().any(|a| a.get_id() == hint.as_str()) {
                format!(" (keys are snake_case: `{hint}`)")
            } else {
                String::new()
            };
            return Err(format!("{p} line {n}: unknown key `{key}`{hint}"));
        };
        let name = format!("key `{key}` ({p} line {n})");
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let on_off = arg
            .get_possible_values()
            .iter()
            .any(|v| v.get_name() == "on");
        let raw = match value.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) if on_off && !switch => (if b { "on" } else { "off" }).into(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
                let items: Option<Vec<String>> = items
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect();
                items
                    .ok_or_else(|| format!("{name}: every item of the array must be a string"))?
                    .join(",")
            }
            other => {
                return Err(format!(
                    "{name}: a {} is not a value of this key",
                    other.type_str()
                ));
            }
        };
        let raw = if switch {
            switch_value(&raw).ok_or_else(|| format!("{name}: `{raw}` is not a boolean"))?
        } else if raw.is_empty() && matches!(arg.get_action(), ArgAction::Append) {
            // An empty list: none of the flag's values, which the file may say explicitly.
            raw
        } else {
            check_value(base, arg.get_long().unwrap_or(&key), &raw, &name)?;
            raw
        };
        out.push(Setting {
            key,
            help: String::new(),
            switch,
            value: (!raw.is_empty()).then_some(raw),
            source: Source::File(path.to_path_buf(), n),
        });
    }
    Ok(out)
}

/// Whether a reload (SIGHUP) changes the setting `key` in a running relay: the live settings
/// of the core, the address ranges served and the log filter; a change of any other is named in a
/// warning and waits for a restart.
pub fn is_live(key: &str) -> bool {
    relay_core::settings::is_live(key)
        || matches!(key, "allowed_peer_ip" | "denied_peer_ip" | "log_level")
}

impl Loaded {
    /// Takes the values of the live keys ([`is_live`]) from `new`, as a reload put them in force.
    pub fn take_live(&mut self, new: &Loaded) {
        for (a, b) in self.settings.iter_mut().zip(&new.settings) {
            if is_live(&a.key) {
                *a = b.clone();
            }
        }
    }

    /// The keys whose values differ in `new`, as `key old -> new`: first the live ones,
    /// then the others.
    pub fn changes(&self, new: &Loaded) -> (Vec<String>, Vec<String>) {
        let (mut live, mut fixed) = (Vec::new(), Vec::new());
        for (a, b) in self.settings.iter().zip(&new.settings) {
            if a.value != b.value {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
                let line = format!("{} {} -> {}", a.key, show(&a.value), show(&b.value));
                if is_live(&a.key) {
                    live.push(line);
                } else {
                    fixed.push(line);
                }
            }
        }
        (live, fixed)
    }

    /// The configuration in force as TOML: every key with its help, its value and its source.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for s in &self.settings {
            let _ = writeln!(out, "# {}", s.help);
            match &s.value {
                None => {
                    let _ = writeln!(out, "# {} is unset  # from {}", s.key, s.source);
                }
                Some(v) => {
                    // A bare number only where TOML reads it back as written (no leading zero,
                    // within i64); any other value is a string, which the file reader takes too.
                    let number = v.parse::<i64>().is_ok_and(|n| n.to_string() == *v);
                    let shown = if s.switch || number {
                        v.clone()
                    } else {
                        toml::Value::String(v.clone()).to_string()
                    };
                    let _ = writeln!(out, "{} = {shown}  # from {}", s.key, s.source);
                }
            }
        }
        out
    }
}
