#![doc = include_str!("../README.md")]

pub mod changes;
pub mod contract;
pub mod pattern;
pub mod ring;
