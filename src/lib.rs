//! vggtrain: the VGG recipe (Simonyan & Zisserman, 2014) on libtorch, with
//! a terminal UI to watch and steer a run.
pub mod attach;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod data;
pub mod device;
pub mod dist;
pub mod engine;
pub mod eval;
pub mod gpu;
pub mod headless;
pub mod model;
pub mod native;
pub mod pack;
pub mod record;
pub mod report;
pub mod ui;
