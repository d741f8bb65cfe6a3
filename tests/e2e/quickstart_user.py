"""The seed's quick-start network (sections 1-2 of quickstart.md), as a user writes it,
with our imports. Registered as QuickStartLDM: the name LatentDiffusion is ours already."""
import random

import torch

from scepter_core import BACKBONES, DIFFUSIONS, EMBEDDERS, LOSSES, MODELS, TOKENIZERS, TrainModule, we


def default(value, d):
    return d if value is None else value


@MODELS.register_class()
class QuickStartLDM(TrainModule):
    strict_keys = False  # the user reads keys with cfg.get() and declares none

    def __init__(self, cfg, logger=None):
        super().__init__(cfg, logger=logger)
        self.model_config = cfg.DIFFUSION_MODEL
        self.first_stage_config = cfg.FIRST_STAGE_MODEL
        self.cond_stage_config = cfg.COND_STAGE_MODEL
        self.loss_config = cfg.get('LOSS', None)

        self.model = BACKBONES.build(self.model_config, logger=self.logger)
        self.first_stage_model = MODELS.build(self.first_stage_config,
                                              logger=self.logger)
        self.cond_stage_model = EMBEDDERS.build(self.cond_stage_config,
                                                logger=self.logger)
        if self.loss_config:
            self.loss = LOSSES.build(self.loss_config, logger=self.logger)

        # Other module definition.
        self.tokenizer = TOKENIZERS.build(cfg.TOKENIZER, logger=self.logger)
        self.diffusion = DIFFUSIONS.build({'NAME': 'GaussianDiffusion',
                                           'SCHEDULE': cfg.SCHEDULE_ARGS}, logger=self.logger)
        self.num_timesteps = cfg.get('TIMESTEPS', 1000)
        self.p_zero = cfg.get('P_ZERO', 0.0)
        self.train_n_prompt = cfg.get('TRAIN_N_PROMPT', '')
        self.default_n_prompt = cfg.get('DEFAULT_N_PROMPT', '')
        self.size_factor = cfg.get('SIZE_FACTOR', 8)
        self.scale_factor = cfg.get('SCALE_FACTOR', 0.18215)
        self.first_stage_model.freeze()

    def encode_first_stage(self, x, **kwargs):
        return self.scale_factor * self.first_stage_model.encode(x)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)

    def encode_condition(self, input, method='encode_text'):
        return getattr(self.cond_stage_model, method)(input)

    def noise_sample(self, batch_size, h, w, g):
        return torch.randn(batch_size, 4, h, w, generator=g, device=we.device_id)

    def forward_train(self, image=None, noise=None, prompt=None, **kwargs):
        x_start = self.encode_first_stage(image, **kwargs)
        t = torch.randint(0,
                          self.num_timesteps, (x_start.shape[0], ),
                          device=x_start.device).long()
        context = {}
        if prompt and self.cond_stage_model:
            zeros = (torch.rand(len(prompt)) < self.p_zero).numpy().tolist()
            prompt = [
                self.train_n_prompt if zeros[idx] else p
                for idx, p in enumerate(prompt)
            ]

            with torch.autocast(device_type='cuda', enabled=False):
                context = self.encode_condition(
                    self.tokenizer(prompt).to(we.device_id))

        loss = self.diffusion.loss(x0=x_start,
                                   t=t,
                                   model=self.model,
                                   model_kwargs={'cond': context},
                                   noise=noise)
        loss = loss.mean()
        ret = {'loss': loss, 'probe_data': {'prompt': prompt}}
        return ret

    @torch.no_grad()
    def forward_test(self,
                     prompt=None,
                     n_prompt=None,
                     sampler='ddim',
                     sample_steps=50,
                     seed=2023,
                     guide_scale=7.5,
                     guide_rescale=0.5,
                     discretization='trailing',
                     run_train_n=True,
                     **kwargs):
        g = torch.Generator(device=we.device_id)
        seed = seed if seed >= 0 else random.randint(0, 2**32 - 1)
        g.manual_seed(seed)
        num_samples = len(prompt)

        n_prompt = default(n_prompt, [self.default_n_prompt] * len(prompt))
        assert isinstance(prompt, list) and \
            isinstance(n_prompt, list) and \
            len(prompt) == len(n_prompt)

        context = self.encode_condition(self.tokenizer(prompt).to(
            we.device_id), method='encode_text')
        null_context = self.encode_condition(self.tokenizer(n_prompt).to(
            we.device_id), method='encode_text')

        width, height = kwargs.pop('image_size', (512, 512))
        noise = self.noise_sample(num_samples, width // self.size_factor,
                                  height // self.size_factor, g)
        # UNet use input n_prompt
        samples = self.diffusion.sample(solver=sampler,
                                        noise=noise,
                                        model=self.model,
                                        model_kwargs=[{
                                            'cond': context
                                        }, {
                                            'cond': null_context
                                        }],
                                        steps=sample_steps,
                                        guide_scale=guide_scale,
                                        guide_rescale=guide_rescale,
                                        discretization=discretization,
                                        show_progress=True,
                                        seed=seed,
                                        condition_fn=None,
                                        clamp=None,
                                        percentile=None,
                                        t_max=None,
                                        t_min=None,
                                        discard_penultimate_step=None,
                                        return_intermediate=None,
                                        **kwargs)
        x_samples = self.decode_first_stage(samples).float()
        x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)

        outputs = list()
        for p, np, img in zip(prompt, n_prompt, x_samples):
            one_tup = {'prompt': p, 'n_prompt': np, 'image': img}
            outputs.append(one_tup)

        return outputs
