//! Load-balanced pools of tunnels: steering ([`pool`]) and each origin's health ([`health`]:
//! monitors through the tunnel, passive health from real requests).

pub mod health;
pub mod pool;
