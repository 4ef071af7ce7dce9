//! `--key value` arguments, and the loopback-only rule for every target.

use std::collections::HashMap;

use crate::Fail;

/// Longest run any scenario may be asked for, in seconds.
pub const MAX_SECONDS: u64 = 300;

#[derive(Debug)]
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse(raw: &[String]) -> Result<Args, Fail> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value.clone());
        }
        Ok(Args(map))
    }

    pub fn get(&self, key: &str) -> Result<&str, Fail> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("--{key} is required").into())
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn num(&self, key: &str, default: u64) -> Result<u64, Fail> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key} must be a number").into()),
        }
    }

    /// `--seconds`, 1 to [`MAX_SECONDS`].
    pub fn seconds(&self, default: u64) -> Result<u64, Fail> {
        Ok(self.num("seconds", default)?.clamp(1, MAX_SECONDS))
    }

    /// `--base`: the gateway's `http://` URL, on loopback.
    pub fn base(&self) -> Result<String, Fail> {
        self.url("base", "http://")
    }

    /// `--base-a` (or `--base`), and `--base-b` (defaults to the first): the
    /// two gateways a cross-replica scenario puts the two sides of a call on.
    pub fn bases(&self) -> Result<(String, String), Fail> {
        let a = if self.opt("base-a").is_some() {
            self.url("base-a", "http://")?
        } else {
            self.url("base", "http://")
                .map_err(|_| "--base-a (or --base) is required")?
        };
        let b = match self.opt("base-b") {
            Some(_) => self.url("base-b", "http://")?,
            None => a.clone(),
        };
        Ok((a, b))
    }

    /// A URL argument with the given scheme whose host is on loopback.
    pub fn url(&self, key: &str, scheme: &str) -> Result<String, Fail> {
        let url = self.get(key)?.trim_end_matches('/').to_owned();
        let authority = url
            .strip_prefix(scheme)
            .ok_or_else(|| format!("--{key} must be a {scheme} URL"))?
            .split('/')
            .next()
            .unwrap_or_default();
        let host = host_of(authority);
        if !is_loopback(host) {
            return Err(format!("refusing to load {host}: only loopback targets are allowed").into());
        }
        Ok(url)
    }

    /// `--pids 12,34`: processes whose memory a scenario watches.
    pub fn pids(&self) -> Result<Vec<u32>, Fail> {
        let Some(raw) = self.opt("pids") else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse()
                    .map_err(|_| format!("--pids: {p:?} is not a process id").into())
            })
            .collect()
    }
}

/// The host of `user:password@host:port` (an IPv6 host keeps its brackets).
fn host_of(authority: &str) -> &str {
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    match host_port.find(']') {
        Some(end) if host_port.starts_with('[') => &host_port[..=end],
        _ => host_port.split(':').next().unwrap_or_default(),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(raw: &[&str]) -> Args {
        Args::parse(&raw.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(args(&["--base", "http://127.0.0.1:8000/"]).base().is_ok());
        assert!(args(&["--base", "http://localhost:8000"]).base().is_ok());
        assert!(args(&["--base", "http://[::1]:8000"]).base().is_ok());
        assert!(args(&["--base", "http://10.0.0.1:8000"]).base().is_err());
        assert!(args(&["--base", "https://127.0.0.1"]).base().is_err());
        let redis = args(&[
            "--r",
            "redis://:secret@127.0.0.1:6379/0",
            "--s",
            "redis://evil@10.1.1.1",
        ]);
        assert!(redis.url("r", "redis://").is_ok());
        assert!(redis.url("s", "redis://").is_err());
    }

    #[test]
    fn base_b_defaults_to_base_a() {
        let (a, b) = args(&["--base-a", "http://127.0.0.1:8000"]).bases().unwrap();
        assert_eq!(a, b);
        let (a, b) = args(&["--base", "http://127.0.0.1:8000", "--base-b", "http://127.0.0.1:8001"])
            .bases()
            .unwrap();
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("http://127.0.0.1:8000", "http://127.0.0.1:8001")
        );
    }
}
