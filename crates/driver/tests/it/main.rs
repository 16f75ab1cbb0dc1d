//! Integration tests of the process driver against real processes (`demo-app` and `/bin/sh`), and
//! of the container driver against the real container engine, and of the swarm driver against a
//! real single-node swarm.

mod adopt;
mod container;
mod logs;
mod process;
mod support;
mod swarm;
