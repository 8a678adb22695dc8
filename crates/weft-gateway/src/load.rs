//! Loading a configuration: `config.rs` (a leaf: the schema, parsing, the checks of values
//! and references) and the checks that need the runtime modules: each auth provider is built
//! once, which reads and parses its key files, so a bad key is reported with its place in the
//! file before anything starts.

use crate::auth::Authenticator;
use crate::config::{located, Config};
use crate::error::ConfigError;

impl Config {
    /// Parses TOML and checks it; `origin` (a file name) prefixes error locations.
    pub fn from_toml(src: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse_toml(src, origin)?;
        cfg.validate_in(Some(src), origin, false)?;
        Ok(cfg)
    }

    /// Checks every value and cross reference. `implicit_services`: route upstreams not
    /// defined here are discovered services (a store is present).
    pub fn validate(&self, origin: &str, implicit_services: bool) -> Result<(), ConfigError> {
        self.validate_in(None, origin, implicit_services)
    }

    fn validate_in(
        &self,
        src: Option<&str>,
        origin: &str,
        implicit_services: bool,
    ) -> Result<(), ConfigError> {
        self.check_shape(src, origin, implicit_services)?;
        for (i, a) in self.auths.iter().enumerate() {
            Authenticator::build(a).map_err(|(f, m)| located(src, origin, "auth", i, f, m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// `config.rs` stays a leaf: it names no runtime module of this crate (before, it built
    /// auth providers and breakers while validating, and those modules imported it back).
    #[test]
    fn the_config_module_uses_only_leaf_modules() {
        // Code only: doc links may name any module.
        let code: String = include_str!("config.rs")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let src = code.as_str();
        let used: std::collections::BTreeSet<&str> = src
            .match_indices("crate::")
            .map(|(i, _)| {
                let rest = &src[i + 7..];
                &rest[..rest
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(rest.len())]
            })
            .collect();
        let allowed = ["error", "template"];
        let bad: Vec<&&str> = used.iter().filter(|m| !allowed.contains(m)).collect();
        assert!(bad.is_empty(), "config.rs uses crate::{bad:?}");
    }
}
