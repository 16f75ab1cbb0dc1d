//! The daemon: store, control API, deployment state machine, health gate and proxy control.
