//! Image references, normalised the way containerd's CRI plugin shows them:
//! `nginx` → `docker.io/library/nginx:latest`.

use std::fmt;

use super::{is_sha256_digest, ImageError};

/// The default registry of unqualified names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The default tag of references with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// `host[:port]`, `docker.io` for unqualified names.
    pub registry: String,
    /// The repository path, `library/` prefixed for official Docker Hub images.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a manifest.
    pub digest: Option<String>,
}

impl ImageReference {
    pub fn parse(s: &str) -> Result<ImageReference, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let s_trim = s.trim();
        if s_trim.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s_trim.split_once('@') {
            Some((rest, d)) => {
                if !is_sha256_digest(d) {
                    return Err(bad(
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (rest, Some(d.to_string()))
            }
            None => (s_trim, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
        }
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty() {
            return Err(bad("empty repository name"));
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && component
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && component
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    "repository path components must be lowercase letters, digits and separators (._-)",
                ));
            }
        }
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("invalid registry host"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if tagged.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The reference oci-client resolves (by digest when pinned).
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (None, t) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| DEFAULT_TAG.to_string()),
            ),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        ImageReference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises() {
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(n("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            n("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(n("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(n("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(n("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b:t");
        assert_eq!(n("ghcr.io/o/r:v"), "ghcr.io/o/r:v");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("app@{d}")), format!("docker.io/library/app@{d}"));
        assert_eq!(
            n(&format!("app:v1@{d}")),
            format!("docker.io/library/app:v1@{d}")
        );
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "Nginx",
            "app@sha256:xyz",
            "app:",
            "a//b",
            "-a",
            "app:-x",
        ] {
            assert!(ImageReference::parse(s).is_err(), "{s}");
        }
    }
}
