//! End-to-end tests: real `kelp server` processes, real kubectl, kube-rs and the Python
//! client, on the embedded store and on a real etcd.

mod bad_inputs;
mod clients;
mod common;
mod kubectl;

use common::{Backend, Cluster};

#[test]
fn kubectl_scenarios_sqlite() {
    let mut c = Cluster::start(Backend::Sqlite);
    kubectl::all(&mut c);
}

#[test]
fn kubectl_scenarios_etcd() {
    let mut c = Cluster::start(Backend::Etcd);
    kubectl::all(&mut c);
}
