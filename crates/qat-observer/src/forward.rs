//! The [`Observer`](crate::Observer) methods every observer writes the same way: they only
//! read the observer's `config` or hand over to its state field. One definition here keeps
//! the six observers from drifting apart.

/// `name`, `dtype` and `scheme`, read from `Self::NAME` and `self.config`.
macro_rules! forward_config {
    () => {
        fn name(&self) -> &'static str {
            Self::NAME
        }

        fn dtype(&self) -> QDType {
            self.config.dtype
        }

        fn scheme(&self) -> QScheme {
            self.config.scheme
        }
    };
}

/// `qparams`, `reset`, `state` and `load_state` of a min / max observer whose running range is
/// `self.$field: $ty` (`$ty: Default` is the empty range, `$ty::load(observer, state)` parses).
macro_rules! forward_range {
    ($field:ident: $ty:ty) => {
        fn qparams(&self) -> Result<TensorQParams> {
            self.$field.qparams(&self.config)
        }

        fn reset(&mut self) {
            self.$field = <$ty>::default();
        }

        fn state(&self) -> Result<State> {
            self.$field.state()
        }

        fn load_state(&mut self, state: &State) -> Result<()> {
            self.$field = <$ty>::load(Self::NAME, state)?;
            Ok(())
        }
    };
}

/// `observe`, `qparams`, `reset`, `state` and `load_state` of an observer built on a
/// [`RunningHistogram`](crate::running_hist::RunningHistogram) in `self.hist`; the range it
/// quantizes is `self.$range()` (`None` before the first batch).
macro_rules! forward_histogram {
    ($range:ident) => {
        fn observe(&mut self, x: &Tensor) -> Result<()> {
            crate::histogram::observe_into(Self::NAME, &mut self.hist, x)
        }

        fn qparams(&self) -> Result<TensorQParams> {
            let (lo, hi) = self.$range().unwrap_or((f32::INFINITY, f32::NEG_INFINITY));
            let cfg = &self.config;
            let q = choose_qparams(lo, hi, cfg.dtype, cfg.scheme.is_symmetric(), cfg.eps)?;
            Ok(TensorQParams::per_tensor(cfg.dtype, cfg.scheme, q))
        }

        fn reset(&mut self) {
            self.hist.reset();
        }

        fn state(&self) -> Result<State> {
            self.hist.state()
        }

        fn load_state(&mut self, state: &State) -> Result<()> {
            self.hist.load(Self::NAME, state)
        }
    };
}

pub(crate) use {forward_config, forward_histogram, forward_range};
