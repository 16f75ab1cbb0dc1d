//! Integration tests of the process driver against real processes (`demo-app` and `/bin/sh`), and
//! of the container driver against the real container engine.

mod adopt;
mod container;
mod logs;
mod process;
mod support;
