"""Samplers against diffusers' schedulers: same initial noise, same eps model, same sigmas -> same latents.

The eps model is one analytic function of (x, t, context, vector), written in MindSpore for our samplers and
in torch for diffusers' loop. Ours sees it through ``denoise(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t)``
with gm's DiscreteDenoiser quantising sigma to the training timestep t (as DiffusionEngine.denoise), or, on
fractional timesteps, with t interpolated as diffusers does; diffusers' loop feeds it
``scale_model_input(latents, t)`` and the timestep t, as its SDXL pipeline does. Samplers that add noise get the
same draws on both sides.
"""
import math

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor, nn, ops
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler)
from diffusers.schedulers import scheduling_ddim, scheduling_dpmsolver_multistep, scheduling_euler_ancestral_discrete

from conftest import rel_err
from gm.constants import SAMPLERS
from gm.modules.diffusionmodules import sampling
from gm.modules.diffusionmodules.denoiser import DiscreteDenoiser
from gm.modules.diffusionmodules.discretizer import SPACINGS, LegacyDDPMDiscretization
from gm.modules.diffusionmodules.guiders import VanillaCFG
from gm.modules.diffusionmodules.sampling import BaseSampler, EulerEDMSampler, make_sampler

SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, prediction_type="epsilon")
DPMPP_2M = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
                euler_at_final=False, final_sigmas_type="zero")
DPMPP_2M_SDE = dict(DPMPP_2M, algorithm_type="sde-dpmsolver++")
DDIM = dict(set_alpha_to_one=True, clip_sample=False)
SHAPE, CTX, VEC = (2, 4, 8, 8), (2, 7, 16), (2, 12)
TOL = 1e-4


class ToyEps(nn.Cell):
    """eps(x, t, context, vector): nonlinear in x, mixes channels, depends on t and on the conditioning."""

    def construct(self, x, t, context, vector):
        u = (t / 1000.0).reshape(-1, 1, 1, 1)
        c = context.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
        v = vector.mean(axis=1).reshape(-1, 1, 1, 1)
        return (0.6 * ops.tanh(x * (0.5 + u)) + 0.3 * ops.sin(3.0 * x - 2.0 * u) + 0.2 * x
                + 0.3 * x.mean(axis=1, keep_dims=True) + 0.5 * c + 0.2 * v)


def torch_eps(x, t, context, vector):
    """ToyEps in torch; t is diffusers' scalar timestep."""
    u = t.float() / 1000.0
    c = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    v = vector.mean(dim=1).reshape(-1, 1, 1, 1)
    return (0.6 * torch.tanh(x * (0.5 + u)) + 0.3 * torch.sin(3.0 * x - 2.0 * u) + 0.2 * x
            + 0.3 * x.mean(dim=1, keepdim=True) + 0.5 * c + 0.2 * v)


class ToyDenoise(nn.Cell):
    """DiffusionEngine.denoise with ToyEps as the network."""

    def __init__(self):
        super().__init__()
        self.denoiser = DiscreteDenoiser(
            {"target": "gm.modules.diffusionmodules.denoiser_scaling.EpsScaling"}, 1000,
            {"target": "gm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"})
        self.net = ToyEps()

    def construct(self, x, sigma, context, vector):
        c_skip, c_out, c_in, c_noise = self.denoiser(sigma)
        return self.net(x * c_in, c_noise, context, vector) * c_out + x * c_skip


def interpolating_denoise(net, log=False, rounded=False):
    """denoise for fractional timesteps: t(sigma) inverts the sigma interpolation exactly.

    The "linspace" spacing visits fractional timesteps, sigma interpolated linearly in t; "karras" visits sigmas
    whose t diffusers interpolates in log sigma (and DPMSolverMultistepScheduler rounds). diffusers hands the model
    that t and scales x by the exact sigma, while DiscreteDenoiser (like sgm's) snaps sigma and t to the nearest
    training level. This denoiser checks the sampler loop itself on such schedules.
    """
    train = LegacyDDPMDiscretization().train_sigmas

    def denoise(x, sigma, context, vector):
        s = sigma.asnumpy().astype(np.float64)
        t = np.interp(np.log(s), np.log(train), np.arange(len(train))) if log else np.interp(s, train, np.arange(len(train)))
        t = Tensor((np.round(t) if rounded else t).astype(np.float32))
        s = Tensor(s.reshape(-1, 1, 1, 1).astype(np.float32))
        return x - s * net(x / ops.sqrt(s * s + 1.0), t, context, vector)
    return denoise


@pytest.fixture(autouse=True)
def graph_mode(keep_mode):
    """Graph mode, as samplers run a compiled denoiser (PyNative is covered by the ms_mode test)."""
    ms.set_context(mode=0)
    ms.set_device("CPU")


@pytest.fixture(scope="module")
def inputs():
    """Initial noise, conditioning and the denoisers (module-wide, so each compiles once per batch size)."""
    rng = np.random.default_rng(0)
    draw = lambda shape: rng.standard_normal(shape).astype(np.float32)
    net = ToyEps()
    return {"noise": draw(SHAPE), "cond": (draw(CTX), draw(VEC)), "uncond": (draw(CTX), draw(VEC)),
            "discrete": ToyDenoise(), "interpolating": interpolating_denoise(net),
            "karras": interpolating_denoise(net, log=True), "karras_rounded": interpolating_denoise(net, True, True)}


def run_ours(sampler, inputs, num_steps, seed=1, denoise=None):
    """Our sampler with ToyDenoise, or with an interpolating denoiser on fractional timesteps ("karras": diffusers'
    log-sigma t, unrounded as the Euler, Heun and LMS schedulers give it)."""
    if denoise is None:
        t = sampler.discretization.timesteps(num_steps)
        fractional = "karras" if sampler.discretization.spacing == "karras" else "interpolating"
        denoise = inputs["discrete" if np.array_equal(t, np.round(t)) else fractional]
    pair = lambda c: (Tensor(c[0]), Tensor(c[1]))
    x = sampler(denoise, Tensor(inputs["noise"]), pair(inputs["cond"]), pair(inputs["uncond"]),
                num_steps=num_steps, rng=np.random.default_rng(seed))
    return x.asnumpy()


def run_diffusers(scheduler, inputs, num_steps, guidance_scale=1.0, timesteps=None):
    """The SDXL pipeline's denoising loop (classifier-free guidance when guidance_scale > 1).

    ``timesteps`` (descending) replaces the scheduler's own spacing, as a pipeline's ``timesteps=`` does.
    """
    if timesteps is None:
        scheduler.set_timesteps(num_steps)
    else:
        scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
    return denoising_loop(scheduler, inputs, guidance_scale)


def denoising_loop(scheduler, inputs, guidance_scale=1.0, **step_kwargs):
    cond = [torch.from_numpy(a) for a in inputs["cond"]]
    uncond = [torch.from_numpy(a) for a in inputs["uncond"]]
    latents = torch.from_numpy(inputs["noise"]) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(latents, t)
        if guidance_scale > 1:
            eps = torch_eps(torch.cat([x_in] * 2), t, torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]]))
            noise_pred_uncond, noise_pred_text = eps.chunk(2)
            eps = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        else:
            eps = torch_eps(x_in, t, *cond)
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
    return latents.numpy()


def diffusers_spacing(spacing):
    """The scheduler config's spacing; "sgm" runs give the scheduler custom timesteps instead, "karras" runs set
    use_karras_sigmas on "linspace" (:func:`scheduler_config`)."""
    return {"sgm": "leading", "karras": "linspace"}.get(spacing, spacing)


def scheduler_config(spacing):
    """SDXL's scheduler config for a spacing, for the schedulers that take use_karras_sigmas."""
    return dict(SDXL_SCHEDULER, timestep_spacing=diffusers_spacing(spacing), use_karras_sigmas=spacing == "karras")


def sgm_timesteps(num_steps):
    """Descending timesteps of the "sgm" spacing, for schedulers given custom timesteps."""
    return LegacyDDPMDiscretization().timesteps(num_steps)[::-1]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 10, 25, 40, 61, 1000])
def test_schedule_matches_diffusers(spacing, num_steps):
    if spacing == "karras" and num_steps == 1:
        pytest.skip("diffusers' Euler spaces 1 Karras step from its 1 linspace timestep, 0; ours, as "
                    "DPMSolverMultistepScheduler's, is sigma_max")
    disc = LegacyDDPMDiscretization(spacing=spacing)
    ref = EulerDiscreteScheduler(**scheduler_config(spacing))
    if spacing == "sgm":
        ref.set_timesteps(timesteps=list(sgm_timesteps(num_steps)))
        t = np.linspace(999, 0, num_steps, endpoint=False).astype(int)[::-1] if num_steps < 1000 else np.arange(1000)
        np.testing.assert_array_equal(disc.timesteps(num_steps), t)
    else:
        ref.set_timesteps(num_steps)
    ours = disc(num_steps)
    ref_t, ref_sigmas = ref.timesteps.numpy()[:num_steps], ref.sigmas.numpy()
    if len(ref_sigmas) == num_steps + 2:  # diffusers' "trailing" adds a timestep -1 for some step counts
        ref_sigmas = np.append(ref_sigmas[:num_steps], 0)
    karras = spacing == "karras"  # t from sigma: diffusers' training sigmas are float32, ours float64
    np.testing.assert_allclose(disc.timesteps(num_steps)[::-1], ref_t, rtol=1e-4 if karras else 0, atol=1e-9)
    assert ours.dtype == np.float32 and ours[-1] == 0 and np.all(np.diff(ours) <= 0)
    np.testing.assert_allclose(ours, ref_sigmas, rtol=2e-5, atol=0)
    np.testing.assert_array_equal(disc(num_steps, flip=True), ours[::-1])
    sampler = EulerEDMSampler({"target": "gm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization",
                               "params": {"spacing": spacing}})
    assert sampler.init_noise_sigma(ours) == pytest.approx(float(ref.init_noise_sigma), rel=2e-5)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [10, 25])
def test_euler_matches_diffusers(inputs, spacing, num_steps):
    ours = run_ours(make_sampler("euler", num_steps, 1.0, spacing), inputs, num_steps)
    scheduler = EulerDiscreteScheduler(**scheduler_config(spacing))
    ref = run_diffusers(scheduler, inputs, num_steps, timesteps=sgm_timesteps(num_steps) if spacing == "sgm" else None)
    assert rel_err(ours, ref) <= TOL


def test_linspace_fractional_timesteps_with_discrete_denoiser(inputs):
    """25 "linspace" steps visit fractional timesteps: DiscreteDenoiser rounds them, diffusers does not.

    The result then differs from diffusers by the quantisation alone (7e-4 here), not by the loop.
    """
    sampler = make_sampler("euler", 25, 1.0, "linspace")
    ref = run_diffusers(EulerDiscreteScheduler(**SDXL_SCHEDULER, timestep_spacing="linspace"), inputs, 25)
    quantised = rel_err(run_ours(sampler, inputs, 25, denoise=inputs["discrete"]), ref)
    assert rel_err(run_ours(sampler, inputs, 25), ref) <= TOL < quantised < 1e-2


@pytest.fixture
def shared_noise(monkeypatch):
    """diffusers' schedulers draw their noise with randn_tensor(generator); replace that, in the scheduler's
    module, by draws from a numpy Generator seeded like the one our sampler gets, so both sides add identical
    noise in order (diffusers draws once more, unused, at the step to sigma 0)."""
    def patch(module, seed):
        rng = np.random.default_rng(seed)
        draw = lambda shape, **kwargs: torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
        monkeypatch.setattr(module, "randn_tensor", draw)
    return patch


@pytest.mark.parametrize("spacing", ["sgm", "leading", "trailing"])
@pytest.mark.parametrize("num_steps", [10, 25])
def test_euler_ancestral_matches_diffusers(inputs, shared_noise, spacing, num_steps):
    ours = run_ours(make_sampler("euler_a", num_steps, 1.0, spacing), inputs, num_steps, seed=7)
    config = dict(SDXL_SCHEDULER, timestep_spacing=diffusers_spacing(spacing))
    shared_noise(scheduling_euler_ancestral_discrete, 7)
    ref = run_diffusers_installed(EulerAncestralDiscreteScheduler(**config), inputs, num_steps, spacing == "sgm")
    assert rel_err(ours, ref) <= TOL
    shared_noise(scheduling_euler_ancestral_discrete, 8)
    other = run_diffusers_installed(EulerAncestralDiscreteScheduler(**config), inputs, num_steps, spacing == "sgm")
    assert rel_err(other, ref) > 1e-2


def run_diffusers_installed(scheduler, inputs, num_steps, sgm):
    """For schedulers that take no custom timesteps (EulerAncestral, LMS): for "sgm" spacing, install the
    timesteps and sigmas EulerDiscreteScheduler computes for them."""
    scheduler.set_timesteps(num_steps)
    if sgm:
        euler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
        euler.set_timesteps(timesteps=list(sgm_timesteps(num_steps)))
        scheduler.timesteps, scheduler.sigmas = euler.timesteps, euler.sigmas
    return denoising_loop(scheduler, inputs)


def dpm_solver_timesteps(spacing, num_steps):
    """DPMSolverMultistepScheduler spaces "leading"/"linspace" on n + 1 points (unlike the Euler schedulers),
    so it is given our timesteps; its own "trailing" spacing is ours, its Karras sigmas too."""
    if spacing in ("trailing", "karras"):
        return None
    return LegacyDDPMDiscretization(spacing=spacing).timesteps(num_steps)[::-1]


@pytest.mark.parametrize("spacing", ["sgm", "leading", "trailing", "karras"])
@pytest.mark.parametrize("num_steps", [10, 25])
def test_dpmpp_2m_matches_diffusers(inputs, spacing, num_steps):
    """With "karras", DPM++ 2M Karras: diffusers rounds the timesteps the model sees."""
    ours = run_ours(make_sampler("dpmpp_2m", num_steps, 1.0, spacing), inputs, num_steps,
                    denoise=inputs["karras_rounded"] if spacing == "karras" else None)
    scheduler = DPMSolverMultistepScheduler(**scheduler_config(spacing), **DPMPP_2M)
    ref = run_diffusers(scheduler, inputs, num_steps, timesteps=dpm_solver_timesteps(spacing, num_steps))
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("spacing", ["sgm", "leading", "trailing", "karras"])
@pytest.mark.parametrize("num_steps", [10, 25])
def test_dpmpp_2m_sde_matches_diffusers(inputs, shared_noise, spacing, num_steps):
    """DPM++ 2M SDE (with "karras": DPM++ 2M SDE Karras), noise shared; another seed gives other latents."""
    ours = run_ours(make_sampler("dpmpp_2m_sde", num_steps, 1.0, spacing), inputs, num_steps, seed=5,
                    denoise=inputs["karras_rounded"] if spacing == "karras" else None)
    refs = []
    for seed in (5, 6):
        shared_noise(scheduling_dpmsolver_multistep, seed)
        scheduler = DPMSolverMultistepScheduler(**scheduler_config(spacing), **DPMPP_2M_SDE)
        refs.append(run_diffusers(scheduler, inputs, num_steps, timesteps=dpm_solver_timesteps(spacing, num_steps)))
    assert rel_err(ours, refs[0]) <= TOL < 1e-2 < rel_err(refs[1], refs[0])


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [10, 25])
def test_heun_matches_diffusers(inputs, spacing, num_steps):
    ours = run_ours(make_sampler("heun", num_steps, 1.0, spacing), inputs, num_steps)
    scheduler = HeunDiscreteScheduler(**scheduler_config(spacing))
    ref = run_diffusers(scheduler, inputs, num_steps, timesteps=sgm_timesteps(num_steps) if spacing == "sgm" else None)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [10, 25])
def test_lms_matches_diffusers(inputs, spacing, num_steps):
    ours = run_ours(make_sampler("lms", num_steps, 1.0, spacing), inputs, num_steps)
    ref = run_diffusers_installed(LMSDiscreteScheduler(**scheduler_config(spacing)), inputs, num_steps, spacing == "sgm")
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("spacing", ["sgm", "leading", "trailing"])
@pytest.mark.parametrize("num_steps", [10, 25])
def test_ddim_matches_diffusers(inputs, spacing, num_steps):
    """DDIMScheduler rounds "linspace" timesteps (ours are fractional) and takes no Karras sigmas."""
    ours = run_ours(make_sampler("ddim", num_steps, 1.0, spacing), inputs, num_steps)
    assert rel_err(ours, run_diffusers_ddim(spacing, inputs, num_steps)) <= TOL


def run_diffusers_ddim(spacing, inputs, num_steps, eta=0.0):
    """DDIMScheduler takes no custom timesteps: for "sgm" spacing, install ours."""
    scheduler = DDIMScheduler(**SDXL_SCHEDULER, **DDIM, timestep_spacing=diffusers_spacing(spacing))
    scheduler.set_timesteps(num_steps)
    if spacing == "sgm":
        scheduler.timesteps = torch.from_numpy(sgm_timesteps(num_steps).astype(np.int64))
    return denoising_loop(scheduler, inputs, eta=eta)


def test_ddim_eta_matches_diffusers(inputs, shared_noise):
    """eta 1: DDIM's noise (DDPM's ancestral sampling), shared; another seed gives other latents."""
    ours = run_ours(make_sampler("ddim", 10, 1.0, "leading", eta=1.0), inputs, 10, seed=9)
    refs = []
    for seed in (9, 10):
        shared_noise(scheduling_ddim, seed)
        refs.append(run_diffusers_ddim("leading", inputs, 10, eta=1.0))
    assert rel_err(ours, refs[0]) <= TOL < 1e-2 < rel_err(refs[1], refs[0])


def test_vanilla_cfg_equals_diffusers_guidance(inputs):
    """CFG on x0 estimates equals diffusers' noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)."""
    scale, sigma, t = 7.5, 3.2, 600
    x = torch.from_numpy(inputs["noise"]) * math.sqrt(sigma ** 2 + 1)
    x_in = x / math.sqrt(sigma ** 2 + 1)
    eps_u = torch_eps(x_in, torch.tensor(t), *[torch.from_numpy(a) for a in inputs["uncond"]])
    eps_c = torch_eps(x_in, torch.tensor(t), *[torch.from_numpy(a) for a in inputs["cond"]])
    ref = (x - sigma * (eps_u + scale * (eps_c - eps_u))).numpy()

    guider = VanillaCFG(scale)
    cond, uncond = [(Tensor(c[0]), Tensor(c[1])) for c in (inputs["cond"], inputs["uncond"])]
    sigmas = Tensor(np.full(SHAPE[0], sigma, np.float32))
    x_ms, s_ms, ctx, vec = guider.prepare_inputs(Tensor(x.numpy()), sigmas, cond, uncond)
    assert x_ms.shape[0] == s_ms.shape[0] == ctx.shape[0] == vec.shape[0] == 2 * SHAPE[0]
    s4 = s_ms.reshape(-1, 1, 1, 1)
    denoised = x_ms - s4 * ToyEps()(x_ms / ops.sqrt(s4 * s4 + 1.0), Tensor(np.full(2 * SHAPE[0], t, np.float32)),
                                    ctx, vec)
    assert rel_err(guider(denoised).asnumpy(), ref) <= 1e-6


@pytest.mark.parametrize("name,num_steps,spacing", [("euler", 25, "leading"), ("dpmpp_2m", 10, "leading"),
                                                    ("dpmpp_2m", 10, "karras"), ("heun", 10, "leading")])
def test_guided_sampling_matches_diffusers(inputs, name, num_steps, spacing):
    """SDXL defaults: "leading" spacing and CFG scale 5; and DPM++ 2M Karras."""
    ours = run_ours(make_sampler(name, num_steps, 5.0, spacing), inputs, num_steps,
                    denoise=inputs["karras_rounded"] if name == "dpmpp_2m" and spacing == "karras" else None)
    if name == "euler":
        ref = run_diffusers(EulerDiscreteScheduler(**scheduler_config(spacing)), inputs, num_steps, guidance_scale=5.0)
    elif name == "heun":
        ref = run_diffusers(HeunDiscreteScheduler(**scheduler_config(spacing)), inputs, num_steps, guidance_scale=5.0)
    else:
        ref = run_diffusers(DPMSolverMultistepScheduler(**scheduler_config(spacing), **DPMPP_2M), inputs, num_steps,
                            guidance_scale=5.0, timesteps=dpm_solver_timesteps(spacing, num_steps))
    assert rel_err(ours, ref) <= TOL


def test_karras_with_discrete_denoiser(inputs):
    """Karras sigmas lie between the training levels: DiscreteDenoiser (the engine's) snaps them to the nearest
    one, diffusers does not. DPM++ 2M Karras then differs from diffusers by that quantisation alone."""
    sampler = make_sampler("dpmpp_2m", 25, 1.0, "karras")
    ref = run_diffusers(DPMSolverMultistepScheduler(**scheduler_config("karras"), **DPMPP_2M), inputs, 25)
    quantised = rel_err(run_ours(sampler, inputs, 25, denoise=inputs["discrete"]), ref)
    assert rel_err(run_ours(sampler, inputs, 25, denoise=inputs["karras_rounded"]), ref) <= TOL < quantised < 1e-2


def test_make_sampler_and_registry():
    """Every sampler class is registered once, under the names the CLI and the app offer."""
    classes = {name: getattr(sampling, class_name) for name, (_, class_name) in SAMPLERS.items()}
    defined = {c for c in vars(sampling).values() if isinstance(c, type) and issubclass(c, BaseSampler)}
    assert set(classes.values()) == defined - {BaseSampler} and len(classes) == 7
    for name, cls in classes.items():
        assert type(make_sampler(name, 10, 5.0)) is cls
    sampler = make_sampler("euler_a", 30, 1.0, "trailing", eta=0.5)
    assert type(sampler.guider).__name__ == "IdentityGuider" and sampler.eta == 0.5
    assert sampler.discretization.spacing == "trailing" and len(sampler.sigmas()) == 31
    assert isinstance(make_sampler("dpmpp_2m", 30, 1.5).guider, VanillaCFG)
    train = LegacyDDPMDiscretization().train_sigmas
    karras = make_sampler("heun", 10, 1.0, "karras").sigmas()
    np.testing.assert_allclose(karras[[0, -2]], train[[-1, 0]], rtol=1e-6)
    assert len(karras) == 11 and karras[-1] == 0 and np.all(np.diff(karras) < 0)
    with pytest.raises(ValueError):
        make_sampler("dpmpp_3m", 30, 5.0)
    with pytest.raises(ValueError):
        LegacyDDPMDiscretization(spacing="exponential")


def test_cli_offers_the_registry():
    from demo.sampling_without_streamlit import parser

    actions = {a.dest: a for a in parser()._actions}
    assert list(actions["sampler"].choices) == list(SAMPLERS) + [c for _, c in SAMPLERS.values()]
    assert actions["spacing"].choices == SPACINGS


def test_euler_ancestral_eta_zero_is_euler(inputs):
    """eta = 0 adds no noise: the ancestral sampler reduces to the Euler ODE sampler."""
    ours = run_ours(make_sampler("euler_a", 10, 1.0, eta=0.0), inputs, 10, seed=1)
    assert rel_err(ours, run_ours(make_sampler("euler", 10, 1.0), inputs, 10, seed=2)) <= 1e-6


@pytest.mark.parametrize("name,kwargs", [("euler_a", {}), ("euler", {"s_churn": 2.0}), ("dpmpp_2m_sde", {}),
                                         ("ddim", {"eta": 1.0})])
def test_noise_follows_rng(inputs, name, kwargs):
    """Ancestral/SDE noise and Euler churn come from the rng: same seed, same latents; another seed, others."""
    runs = [run_ours(make_sampler(name, 10, 1.0, **kwargs), inputs, 10, seed=s) for s in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert rel_err(runs[0], runs[2]) > 1e-2


def test_callback(inputs):
    calls = []
    sampler = make_sampler("dpmpp_2m", 10, 1.0)
    sampler(inputs["discrete"], Tensor(inputs["noise"]), (Tensor(inputs["cond"][0]), Tensor(inputs["cond"][1])),
            callback=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 10) for i in range(1, 11)]


def test_guided_euler_in_both_modes(inputs, ms_mode):
    """A guided Euler run in PyNative and in graph mode (a fresh denoiser in each)."""
    sampler = make_sampler("euler", 10, 5.0, "leading")
    ref = run_diffusers(EulerDiscreteScheduler(**SDXL_SCHEDULER, timestep_spacing="leading"), inputs, 10,
                        guidance_scale=5.0)
    assert rel_err(run_ours(sampler, inputs, 10, denoise=ToyDenoise()), ref) <= TOL
