//! The observer / fake-quant switches that [`crate::FakeQuantize`] and
//! [`crate::FusedMovingAvgObsFakeQuantize`] share: the flags, their state entries and the
//! public methods that flip and read them.

use candle_core::{DType, Result};

use crate::state::{self, State};

/// Whether the observer updates the qparams and whether `forward` fake-quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switches {
    pub observer: bool,
    pub fake_quant: bool,
}

impl Switches {
    /// Both on (PyTorch's initial buffers).
    pub const ON: Switches = Switches {
        observer: true,
        fake_quant: true,
    };

    /// Their state names (PyTorch's).
    pub const NAMES: [&'static str; 2] = ["fake_quant_enabled", "observer_enabled"];

    /// Add both flags to `st` as tensors of `dtype` (PyTorch uses u8 in `FakeQuantize` and
    /// i64 in the fused module).
    pub fn insert_state(self, st: &mut State, dtype: DType) -> Result<()> {
        st.insert(Self::NAMES[0].into(), state::flag(self.fake_quant, dtype)?);
        st.insert(Self::NAMES[1].into(), state::flag(self.observer, dtype)?);
        Ok(())
    }

    /// Read both flags (any integer dtype) from a state.
    pub fn read(module: &'static str, st: &State) -> Result<Switches> {
        Ok(Switches {
            fake_quant: state::read_flag(module, st, Self::NAMES[0])?,
            observer: state::read_flag(module, st, Self::NAMES[1])?,
        })
    }
}

/// `lock`, `enable_observer`, `enable_fake_quant`, `observer_enabled` and
/// `fake_quant_enabled` for a module with `inner: Mutex<Inner>` where `Inner` has
/// `switches: Switches`, and a `NAME` constant in scope.
macro_rules! switch_methods {
    () => {
        fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
            self.inner
                .lock()
                .map_err(|_| Error::Msg(format!("{NAME}: state poisoned by a panic")))
        }

        /// Switch the observer on or off (off: the observed range and the qparams stay as
        /// they are).
        pub fn enable_observer(&self, on: bool) {
            if let Ok(mut g) = self.inner.lock() {
                g.switches.observer = on;
            }
        }

        /// Switch fake quantization on or off (off: `forward` is the identity).
        pub fn enable_fake_quant(&self, on: bool) {
            if let Ok(mut g) = self.inner.lock() {
                g.switches.fake_quant = on;
            }
        }

        /// Whether the observer is on.
        pub fn observer_enabled(&self) -> bool {
            self.inner
                .lock()
                .map(|g| g.switches.observer)
                .unwrap_or(false)
        }

        /// Whether fake quantization is on.
        pub fn fake_quant_enabled(&self) -> bool {
            self.inner
                .lock()
                .map(|g| g.switches.fake_quant)
                .unwrap_or(false)
        }
    };
}

pub(crate) use switch_methods;
