use super::{Layout, Named, Param, Slot};
use crate::engine::batchnorm as bn;
use crate::engine::device::{self, BnWeights, DeviceVec, Epilogue, Residual, View, ViewMut};
use crate::engine::{GradMode, Workspace, split_range};
use std::ops::Range;
use std::sync::Arc;

/// How many groups a training batch of `images` images is normalized in, for groups of at
/// most `group` images (None: the whole batch).
pub fn bn_group_count(images: usize, group: Option<usize>) -> usize {
    group.map_or(1, |g| images.div_ceil(g.max(1)).max(1))
}

/// BatchNorm2d with PyTorch's defaults (eps 1e-5, momentum 0.1, γ=1, β=0).
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: DeviceVec,
    pub running_var: DeviceVec,
    pub momentum: f32,
    pub eps: f32,
    /// Training normalizes groups of at most this many images, each by its own statistics,
    /// as data-parallel devices do (see [`BatchNorm2d::forward`]); None: the whole batch.
    pub group: Option<usize>,
    /// Synchronized BatchNorm: training statistics over the whole batch of every process
    /// of a job (`group` is then None).
    pub sync: Option<Arc<dyn bn::SyncStats>>,
    /// The statistics of each group of the last training forward, and its rows.
    saved: Vec<(Range<usize>, device::BnSaved)>,
    /// Room for the groups after the first: their running averages (dropped) and their
    /// gradients of γ and β (added to the first's).
    spare: [DeviceVec; 2],
    /// The inference transform `x·scale + shift` from the running statistics.
    eval_scale: DeviceVec,
    eval_shift: DeviceVec,
}

impl BatchNorm2d {
    pub fn new(c: usize) -> Self {
        BatchNorm2d {
            weight: Param::filled(c, 1.0),
            bias: Param::filled(c, 0.0),
            running_mean: DeviceVec::zeros(c),
            running_var: DeviceVec::filled(c, 1.0),
            momentum: 0.1,
            eps: 1e-5,
            group: None,
            sync: None,
            saved: Vec::new(),
            spare: Default::default(),
            eval_scale: DeviceVec::zeros(c),
            eval_shift: DeviceVec::zeros(c),
        }
    }

    /// `y = [relu](bn(x) [+ residual])` over the `rows` NHWC pixels of `images` images.
    ///
    /// In training, with `group` set, the images are cut into as few near-equal groups of
    /// at most that many as will do (as `split_range` cuts them), each normalized by its
    /// own statistics, as on data-parallel devices without synchronized BatchNorm: the
    /// paper trained CIFAR on two GPUs, 64 images each, and ImageNet on eight, 32 each.
    /// The running averages follow the first group only, as data-parallel training keeps
    /// the first device's (PyTorch's DataParallel, DDP's buffer broadcast, fb.resnet.torch).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        train: bool,
        images: usize,
        rows: usize,
        x: View,
        residual: Option<View>,
        relu: bool,
        mut y: ViewMut,
        ws: &mut Workspace,
    ) {
        let (gamma, beta) = (self.weight.value.view(), self.bias.value.view());
        let p = BnWeights { gamma, beta, eps: self.eps, sync: self.sync.as_deref() };
        if !train {
            let (mean, var) = (self.running_mean.view(), self.running_var.view());
            device::bn_forward_eval(p, x, rows, mean, var, residual, relu, y, ws);
            return;
        }
        let c = self.running_mean.len();
        let groups = bn_group_count(images, self.group);
        let plane = rows / images.max(1);
        self.saved.resize_with(groups, || (0..0, device::BnSaved::new(c)));
        let [spare_mean, spare_var] = &mut self.spare;
        for (k, (range, saved)) in self.saved.iter_mut().enumerate() {
            let images = split_range(images, groups, k);
            *range = images.start * plane..images.end * plane;
            let (mean, var) = match k {
                0 => (&mut self.running_mean, &mut self.running_var),
                _ => {
                    spare_mean.clone_from(&self.running_mean);
                    spare_var.clone_from(&self.running_var);
                    (&mut *spare_mean, &mut *spare_var)
                }
            };
            let values = range.start * c..range.end * c;
            device::bn_forward_train(
                p,
                x.slice(values.clone()),
                range.len(),
                self.momentum,
                mean.view_mut(),
                var.view_mut(),
                saved,
                residual.map(|r| r.slice(values.clone())),
                relu,
                y.reborrow().slice_mut(values),
                ws,
            );
        }
    }

    /// The inference-mode transform as a convolution epilogue: `relu(x·scale + shift + residual)`.
    pub fn epilogue<'a>(&'a mut self, residual: Residual<'a>, relu: bool) -> Epilogue<'a> {
        let (gamma, beta) = (self.weight.value.view(), self.bias.value.view());
        let p = BnWeights { gamma, beta, eps: self.eps, sync: self.sync.as_deref() };
        let (mean, var) = (self.running_mean.view(), self.running_var.view());
        device::bn_eval_affine(p, mean, var, self.eval_scale.view_mut(), self.eval_shift.view_mut());
        Epilogue { scale: self.eval_scale.view(), shift: self.eval_shift.view(), residual, relu }
    }

    /// In place: `g` is dL/d(output) on entry, dL/dx on return. `relu`: the forward's
    /// ReLU came straight after this layer (no residual), and `g` is masked by it.
    /// The groups are those of the last training forward. γ's and β's gradients are
    /// written or added to, as the workspace's gradient mode says.
    pub fn backward(&mut self, x: View, relu: bool, mut g: ViewMut, ws: &mut Workspace) {
        let mode = ws.grad_mode();
        let (gamma, beta) = (self.weight.value.view(), self.bias.value.view());
        let p = BnWeights { gamma, beta, eps: self.eps, sync: self.sync.as_deref() };
        let c = self.running_mean.len();
        let [dgamma, dbeta] = &mut self.spare;
        let (gamma_grad, beta_grad) = (&mut self.weight.grad, &mut self.bias.grad);
        for (k, (range, saved)) in self.saved.iter().enumerate() {
            let values = range.start * c..range.end * c;
            let (x, g) = (x.slice(values.clone()), g.reborrow().slice_mut(values));
            if k == 0 && mode == GradMode::Overwrite {
                device::bn_backward(p, x, range.len(), saved, relu, g, gamma_grad.view_mut(), beta_grad.view_mut(), ws);
            } else {
                dgamma.ensure_len(c);
                dbeta.ensure_len(c);
                device::bn_backward(p, x, range.len(), saved, relu, g, dgamma.view_mut(), dbeta.view_mut(), ws);
                device::add_scaled(gamma_grad.view_mut(), 1.0, dgamma.view());
                device::add_scaled(beta_grad.view_mut(), 1.0, dbeta.view());
            }
        }
    }

    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }

    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        let c = self.running_mean.len();
        let entries: [(&str, Slot<'a>); 4] = [
            ("weight", Slot::Param(&mut self.weight)),
            ("bias", Slot::Param(&mut self.bias)),
            ("running_mean", Slot::Buffer(&mut self.running_mean)),
            ("running_var", Slot::Buffer(&mut self.running_var)),
        ];
        for (field, slot) in entries {
            out.push(Named { name: format!("{prefix}.{field}"), shape: vec![c], layout: Layout::Plain, slot });
        }
    }
}
