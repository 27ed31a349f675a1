//! Learning-rate schedule.

use candle_core::Var;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use asen_models::{ModelError, Result};

/// Step decay: `lr(epoch) = base_lr * factor^(epoch / every_epochs)` with
/// 0-based epochs. Defaults: Adam at 1e-4 as in the paper, halved every 5
/// epochs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepDecay {
    /// Learning rate of the first epochs.
    pub base_lr: f64,
    /// Multiplier applied at each step, in (0, 1].
    pub factor: f64,
    /// Epochs between steps (at least 1).
    pub every_epochs: usize,
}

impl Default for StepDecay {
    fn default() -> Self {
        StepDecay {
            base_lr: 1e-4,
            factor: 0.5,
            every_epochs: 5,
        }
    }
}

impl StepDecay {
    /// A checked schedule.
    pub fn new(base_lr: f64, factor: f64, every_epochs: usize) -> Result<StepDecay> {
        let valid = base_lr > 0.0 && base_lr.is_finite() && factor > 0.0 && factor <= 1.0;
        if !valid || every_epochs == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "step decay needs base_lr > 0, 0 < factor <= 1 and every_epochs >= 1, got {base_lr}, {factor}, {every_epochs}"
            )));
        }
        Ok(StepDecay {
            base_lr,
            factor,
            every_epochs,
        })
    }

    /// Learning rate of 0-based `epoch`.
    pub fn lr(&self, epoch: usize) -> f64 {
        let steps = epoch / self.every_epochs.max(1);
        self.base_lr * self.factor.powi(steps.min(i32::MAX as usize) as i32)
    }

    /// Set the optimiser's learning rate for `epoch`; returns it.
    pub fn apply<O: Optimizer>(&self, optimizer: &mut O, epoch: usize) -> f64 {
        let lr = self.lr(epoch);
        optimizer.set_learning_rate(lr);
        lr
    }

    /// Adam (AdamW without weight decay) over `vars` at the base rate.
    pub fn adam(&self, vars: Vec<Var>) -> Result<AdamW> {
        let params = ParamsAdamW {
            lr: self.base_lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        };
        Ok(AdamW::new(vars, params)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_in_steps() {
        let s = StepDecay::new(1e-4, 0.1, 3).unwrap();
        let lrs: Vec<f64> = (0..7).map(|e| s.lr(e)).collect();
        let expect = [1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-6];
        for (a, b) in lrs.iter().zip(expect) {
            assert!((a - b).abs() < 1e-18, "{lrs:?}");
        }
        assert!(StepDecay::new(1e-4, 0.0, 3).is_err());
        assert!(StepDecay::new(1e-4, 0.5, 0).is_err());
        assert!(StepDecay::new(-1.0, 0.5, 1).is_err());
    }

    #[test]
    fn applies_to_adam() {
        let v = Var::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let s = StepDecay::default();
        let mut adam = s.adam(vec![v]).unwrap();
        assert_eq!(adam.learning_rate(), 1e-4);
        assert_eq!(s.apply(&mut adam, 5), 5e-5);
        assert_eq!(adam.learning_rate(), 5e-5);
    }
}
