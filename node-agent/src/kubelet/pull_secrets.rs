//! `imagePullSecrets` → CRI `AuthConfig`: the pod's `kubernetes.io/dockerconfigjson`
//! (`{"auths": {registry: entry}}`) and `kubernetes.io/dockercfg` (`{registry: entry}`)
//! secrets, matched against the image's registry host as upstream's keyring does (the
//! key's host and port equal, its path a prefix of the repository). Pure; the worker
//! fetches the secrets.

use std::collections::BTreeMap;

use base64::Engine;
use kelp_cri_api::v1 as cri;
use serde::Deserialize;

pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// Docker Hub's names, all one registry.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry host (`host[:port]`) and repository path of an image reference, with
/// Docker's defaulting (`nginx` → `docker.io`, `library/nginx`).
pub fn split_image(image: &str) -> (String, String) {
    let no_digest = image.split('@').next().unwrap_or(image);
    let (first, rest) = match no_digest.split_once('/') {
        Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
            (f.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), no_digest.to_string()),
    };
    // Drop the tag (a ':' after the last '/').
    let repo = match rest.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r.to_string(),
        _ => rest,
    };
    (first, repo)
}

/// A config key (`https://host:port/v1/`, `host:port`, `host/path`) as (host, path).
fn key_parts(key: &str) -> (String, String) {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    (
        host.to_ascii_lowercase(),
        path.trim_end_matches('/').to_string(),
    )
}

fn host_matches(key_host: &str, image_host: &str) -> bool {
    let image_host = image_host.to_ascii_lowercase();
    if key_host == image_host {
        return true;
    }
    DOCKER_HUB.contains(&key_host) && DOCKER_HUB.contains(&image_host.as_str())
}

/// The credentials in one secret (`type_`, `data`), by registry key.
fn entries(type_: &str, data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Entry> {
    match type_ {
        DOCKER_CONFIG_JSON => data
            .get(".dockerconfigjson")
            .and_then(|d| serde_json::from_slice::<ConfigJson>(d).ok())
            .map(|c| c.auths)
            .unwrap_or_default(),
        DOCKER_CFG => data
            .get(".dockercfg")
            .and_then(|d| serde_json::from_slice::<BTreeMap<String, Entry>>(d).ok())
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    }
}

/// A Secret as [`credentials_for`] takes it: its type and data (`stringData` merged).
pub fn secret_data(s: k8s_openapi::api::core::v1::Secret) -> (String, BTreeMap<String, Vec<u8>>) {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    (s.type_.unwrap_or_default(), data)
}

/// The credentials for `image` from the pod's pull secrets (`(type, data)` each, in
/// the pod's order), most specific key first.
pub fn credentials_for(
    image: &str,
    secrets: &[(String, BTreeMap<String, Vec<u8>>)],
) -> Vec<cri::AuthConfig> {
    let (host, repo) = split_image(image);
    let mut found: Vec<(usize, cri::AuthConfig)> = Vec::new();
    for (type_, data) in secrets {
        for (key, e) in entries(type_, data) {
            let (k_host, k_path) = key_parts(&key);
            let path_ok = k_path.is_empty()
                || k_path == "v1"
                || repo == k_path
                || repo.starts_with(&format!("{k_path}/"));
            if !host_matches(&k_host, &host) || !path_ok {
                continue;
            }
            let (mut username, mut password) = (e.username.clone(), e.password.clone());
            if username.is_empty() && !e.auth.is_empty() {
                if let Some((u, p)) = base64::engine::general_purpose::STANDARD
                    .decode(e.auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    })
                {
                    username = u;
                    password = p;
                }
            }
            found.push((
                k_path.len(),
                cri::AuthConfig {
                    username,
                    password,
                    // As a URL: containerd parses it as one and compares its
                    // host with the registry's ("host:port" alone does not parse).
                    server_address: if k_host.contains("://") {
                        k_host
                    } else {
                        format!("https://{k_host}")
                    },
                    ..Default::default()
                },
            ));
        }
    }
    // Longest path first; stable, so the pod's order breaks ties.
    found.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    found.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(type_: &str, key: &str, json: &str) -> (String, BTreeMap<String, Vec<u8>>) {
        (
            type_.to_string(),
            [(key.to_string(), json.as_bytes().to_vec())].into(),
        )
    }

    #[test]
    fn images_split_into_host_and_repository() {
        let cases = [
            (
                "127.0.0.1:5000/kelp/hello:v1",
                "127.0.0.1:5000",
                "kelp/hello",
            ),
            ("localhost/a", "localhost", "a"),
            ("nginx", "docker.io", "nginx"),
            ("library/nginx:1", "docker.io", "library/nginx"),
            ("ghcr.io/o/r@sha256:00", "ghcr.io", "o/r"),
        ];
        for (image, host, repo) in cases {
            assert_eq!(
                split_image(image),
                (host.to_string(), repo.to_string()),
                "{image}"
            );
        }
    }

    #[test]
    fn matching_registry_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let json = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},"other.io":{{"username":"x","password":"y"}}}}}}"#
        );
        let cfg = r#"{"https://index.docker.io/v1/":{"username":"hub","password":"pw"}}"#;
        let secrets = vec![
            secret(DOCKER_CONFIG_JSON, ".dockerconfigjson", &json),
            secret(DOCKER_CFG, ".dockercfg", cfg),
            secret("Opaque", ".dockerconfigjson", &json),
        ];
        let c = credentials_for("127.0.0.1:5000/kelp/hello:v1", &secrets);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].username.as_str(), c[0].password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(c[0].server_address, "https://127.0.0.1:5000");
        let c = credentials_for("nginx:1", &secrets);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].username, "hub");
        assert!(credentials_for("127.0.0.1:5001/kelp/hello:v1", &secrets).is_empty());
        // Path-scoped keys apply to their repositories only, most specific first.
        let scoped = r#"{"auths":{"r.io/team":{"username":"team","password":"1"},"r.io":{"username":"all","password":"2"}}}"#;
        let s = vec![secret(DOCKER_CONFIG_JSON, ".dockerconfigjson", scoped)];
        let names = |image| -> Vec<String> {
            credentials_for(image, &s)
                .into_iter()
                .map(|a| a.username)
                .collect()
        };
        assert_eq!(names("r.io/team/app:v1"), ["team", "all"]);
        assert_eq!(names("r.io/teamx/app:v1"), ["all"]);
    }
}
