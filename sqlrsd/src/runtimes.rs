//! Which runtime serves what: the default one (from config, or what `auto`
//! finds: Docker when it answers and has the image, else native), and Docker
//! runtimes per image, connected on first use. Instances remember their
//! runtime and image so they are always served by the one that made them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::RuntimeKind;
use crate::runtime::docker::{DockerConfig, DockerRuntime, Network};
use crate::runtime::{NativeConfig, NativeRuntime, Runtime, RuntimeError};

pub struct RuntimeSettings {
    pub kind: RuntimeKind,
    pub native: NativeConfig,
    pub docker_host: Option<String>,
    pub docker_image: String,
    pub docker_network: Network,
    /// Store folders every container sees at the same path (the exec mirrors).
    pub shared_dirs: Vec<PathBuf>,
}

/// A runtime as requests and instances refer to it.
#[derive(Clone)]
pub struct Selected {
    pub runtime: Arc<dyn Runtime>,
    /// The Docker image, empty for native.
    pub image: String,
}

pub struct Runtimes {
    settings: RuntimeSettings,
    native: Result<Arc<NativeRuntime>, String>,
    docker: tokio::sync::Mutex<HashMap<String, Arc<DockerRuntime>>>,
    default: Selected,
    reason: String,
}

impl Runtimes {
    /// Picks the default runtime; fails when the configured one is unusable.
    pub async fn new(settings: RuntimeSettings) -> Result<Self, RuntimeError> {
        let native = NativeRuntime::detect(&settings.native)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        let mut docker = HashMap::new();
        let (default, reason) = match settings.kind {
            RuntimeKind::Native => {
                let rt = NativeRuntime::detect(&settings.native)?;
                let reason = "native: runtime.kind = native in the config".to_string();
                (native_selected(Arc::new(rt)), reason)
            }
            RuntimeKind::Docker => {
                let rt = Arc::new(
                    DockerRuntime::connect(&docker_config(&settings, &settings.docker_image))
                        .await?,
                );
                let reason = format!(
                    "docker: runtime.kind = docker in the config; image {} at {}",
                    settings.docker_image,
                    rt.docker_host()
                );
                docker.insert(settings.docker_image.clone(), rt.clone());
                (docker_selected(rt, &settings.docker_image), reason)
            }
            RuntimeKind::Auto => {
                match DockerRuntime::connect(&docker_config(&settings, &settings.docker_image))
                    .await
                {
                    Ok(rt) => {
                        let rt = Arc::new(rt);
                        let reason = format!(
                            "docker: Docker answers at {} and has image {}",
                            rt.docker_host(),
                            settings.docker_image
                        );
                        docker.insert(settings.docker_image.clone(), rt.clone());
                        (docker_selected(rt, &settings.docker_image), reason)
                    }
                    Err(docker_err) => match &native {
                        Ok(rt) => (
                            native_selected(rt.clone()),
                            format!("native: Docker is not usable ({docker_err})"),
                        ),
                        Err(native_err) => {
                            return Err(RuntimeError::NoRuntime {
                                docker: docker_err.to_string(),
                                native: native_err.clone(),
                            });
                        }
                    },
                }
            }
        };
        Ok(Self {
            settings,
            native,
            docker: tokio::sync::Mutex::new(docker),
            default,
            reason,
        })
    }

    pub fn default(&self) -> &Selected {
        &self.default
    }

    /// Why the default runtime was chosen, for `sqlrs status`.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The runtime for a request: the default, or Docker with `image`.
    pub async fn for_image(&self, image: Option<&str>) -> Result<Selected, RuntimeError> {
        match image.filter(|i| !i.is_empty()) {
            None => Ok(self.default.clone()),
            Some(image) => Ok(docker_selected(self.docker(image).await?, image)),
        }
    }

    /// The runtime that made an instance.
    pub async fn for_instance(&self, kind: &str, image: &str) -> Result<Selected, RuntimeError> {
        if kind == "docker" {
            return Ok(docker_selected(self.docker(image).await?, image));
        }
        match &self.native {
            Ok(rt) => Ok(native_selected(rt.clone())),
            Err(e) => Err(RuntimeError::NativeUnavailable(e.clone())),
        }
    }

    /// The Docker runtime of `image`, connecting on first use.
    pub async fn docker(&self, image: &str) -> Result<Arc<DockerRuntime>, RuntimeError> {
        let mut map = self.docker.lock().await;
        if let Some(rt) = map.get(image) {
            return Ok(rt.clone());
        }
        let rt = Arc::new(DockerRuntime::connect(&docker_config(&self.settings, image)).await?);
        map.insert(image.to_owned(), rt.clone());
        Ok(rt)
    }

    /// Every Docker runtime connected so far.
    pub async fn connected_docker(&self) -> Vec<Arc<DockerRuntime>> {
        self.docker.lock().await.values().cloned().collect()
    }
}

fn docker_config(settings: &RuntimeSettings, image: &str) -> DockerConfig {
    DockerConfig {
        image: image.to_owned(),
        network: settings.docker_network,
        docker_host: settings.docker_host.clone(),
        shared_dirs: settings.shared_dirs.clone(),
    }
}

fn native_selected(rt: Arc<NativeRuntime>) -> Selected {
    Selected {
        runtime: rt,
        image: String::new(),
    }
}

fn docker_selected(rt: Arc<DockerRuntime>, image: &str) -> Selected {
    Selected {
        runtime: rt,
        image: image.to_owned(),
    }
}
