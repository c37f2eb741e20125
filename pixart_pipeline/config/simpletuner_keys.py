"""SimpleTuner's other ``config.json`` options: refused with a reason, not as "unknown key".

``SIMPLETUNER_OPTIONS`` holds the names of every option SimpleTuner's argument parser (its field
registry) or its ``documentation/OPTIONS.md`` defines (bghira/SimpleTuner at bc8e6ab), less those
this project models or handles elsewhere (``models.UNSUPPORTED``/``IGNORED``,
``simpletuner_values``). A config.json copied from SimpleTuner may hold any of them: one set to
nothing (``null``, ``false``, ``""``, ``"false"``, ``"none"``) loads with a warning; any other value is
an error naming why (``reason``).
"""

from __future__ import annotations

from typing import Any

SIMPLETUNER_OPTIONS = frozenset("""
accelerate_config accelerate_extra_args accelerator_cache_clear_interval
allow_dataset_oversubscription aspect_bucket_alignment aspect_bucket_disable_rebuild
aspect_bucket_worker_count assistant_lora_inference_strength assistant_lora_path
assistant_lora_strength audio_channels audio_duration_interval audio_flow_schedule_shift
audio_max_duration_seconds audio_min_duration_seconds audio_truncation_mode aws_max_pool_connections
base_model_default_dtype base_model_precision cache_dir cache_dir_text cache_dir_vae
caption_strategy checkpoint_epoch_interval checkpointing_rolling_steps checkpointing_use_tempdir
checkpoints_rolling_total_limit compress_disk_cache conditioning_multidataset_sampling
context_parallel_comm_strategy context_parallel_size control controlnet controlnet_custom_config
controlnet_model_name_or_path cosmos3_generator_component cosmos3_reasoner_component
crepa_adjacent_distance crepa_adjacent_tau crepa_block_index crepa_cumulative_neighbors
crepa_cutoff_step crepa_decay_steps crepa_drop_vae_encoder crepa_enabled crepa_encoder
crepa_encoder_frames_batch_size crepa_encoder_image_size crepa_feature_source crepa_lambda
crepa_lambda_end crepa_model crepa_normalize_by_frames crepa_normalize_neighbour_sum crepa_power
crepa_scheduler crepa_self_flow crepa_self_flow_mask_ratio crepa_similarity_ema_decay
crepa_similarity_threshold crepa_spatial_align crepa_teacher_block_index crepa_threshold_mode
crepa_use_backbone_features crepa_use_tae crepa_warmup_steps custom_text_encoder_intermediary_layers
custom_tracker data_aesthetic_score data_backend_sampling dataloader_prefetch
dataloader_prefetch_qlen debug_aspect_buckets debug_dataset_loader
deepfloyd_validation_pipeline_mode deepfloyd_validation_stage1_guidance
deepfloyd_validation_stage1_model deepfloyd_validation_stage1_num_inference_steps
deepfloyd_validation_stage2_guidance deepfloyd_validation_stage2_model
deepfloyd_validation_stage2_num_inference_steps deepfloyd_validation_stage3_guidance
deepfloyd_validation_stage3_mode deepfloyd_validation_stage3_model
deepfloyd_validation_stage3_noise_level deepspeed_config delete_invalid_checkpoints
delete_model_after_load delete_nsfw_images delete_problematic_images delete_unwanted_images
diff2flow_enabled diff2flow_loss diffusion_blocks_config disable_assistant_lora
disable_bucket_pruning disable_segmented_timestep_sampling disable_tf32 disk_low_action
disk_low_script disk_low_threshold distillation_config distillation_method dynamo_backend
dynamo_dynamic dynamo_fullgraph dynamo_mode dynamo_use_regional_compilation ema_cpu_only ema_device
ema_foreach_disable ema_update_interval ema_validation ema_warmup_steps enable_group_offload
enable_multiprocessing enable_nsfw_check enable_watermark eval_dataset_id find_unused_parameters
flow_beta_schedule_alpha flow_beta_schedule_beta flow_cubic_schedule_weights flow_custom_timesteps
flow_schedule_auto_shift flow_schedule_shift flow_sigmoid_scale flow_timesteps_mode
flow_use_beta_schedule flow_use_uniform_schedule framerate freeze_encoder_after
freeze_encoder_before freeze_encoder_strategy fsdp_activation_checkpointing fsdp_auto_wrap_policy
fsdp_cpu_offload fsdp_cpu_ram_efficient_loading fsdp_enable fsdp_limit_all_gathers
fsdp_reshard_after_forward fsdp_state_dict_type fsdp_transformer_layer_cls_to_wrap fsdp_version
fully_unload_text_encoder fuse_optimizer fuse_qkv_projections grad_clip_method
gradient_checkpointing_backend gradient_checkpointing_interval
gradient_checkpointing_offload_attention gradient_checkpointing_offload_pin_memory_max_buckets
gradient_checkpointing_offload_prefetch gradient_checkpointing_segment_stride gradient_precision
group_offload_blocks_per_group group_offload_text_encoder group_offload_to_disk_path
group_offload_type group_offload_use_stream group_offload_vae huber_c huber_schedule
i_know_what_i_am_doing ignore_missing_files image_processing_batch_size
inference_scheduler_timestep_spacing init_lora init_lora_ema init_lora_step input_perturbation
input_perturbation_steps instance_prompt internal_guidance_block_index internal_guidance_enabled
internal_guidance_loss_weight irepa_enabled irepa_projector_kernel_size irepa_spatial_norm_alpha
keep_vae_loaded krea2_reference_latents layer_freeze_strategy layersync_enabled layersync_lambda
layersync_student_block layersync_teacher_block local_rank lora_format loss_type lr_end lr_scale
lr_scale_sqrt machine_rank main_process_ip main_process_port masked_loss_probability
max_grounding_entities max_upscale_threshold max_workers metadata_update_interval
minimax_h3_sparse_attention minimax_h3_target_mode minimax_music_lm_adapter
minimax_music_lm_max_frames minimax_music_lm_precache_mode minimax_music_train_component
mixflow_enabled mixflow_gamma model_card_note model_card_private model_card_safe_for_work
model_flavour modelspec_comment musubi_block_swap_device musubi_blocks_to_swap nextlat_block_index
nextlat_enabled nextlat_kl_weight nextlat_state_loss nextlat_weight noise_offset_probability
nsfw_check_backend_types nsfw_check_min_votes nsfw_check_models nsfw_check_sample_types
nsfw_check_video_frame_count nsfw_check_video_frame_selection nsfw_check_video_min_flagged_frames
num_machines num_validation_images offload_during_save offload_during_startup offload_param_path
offset_noise only_instance_prompt optimizer_beta1 optimizer_beta2 optimizer_config
optimizer_cpu_offload_method optimizer_offload_gradients optimizer_release_gradients
override_dataset_config parquet_caption_column parquet_filename_column
pixart_validation_pipeline_mode pixart_validation_stage1_model pixart_validation_stage2_model
post_checkpoint_script post_upload_script prediction_type prepend_instance_prompt
preserve_data_backend_cache pretrained_gemma_model_name_or_path
pretrained_grounding_model_name_or_path pretrained_t5_model_name_or_path
pretrained_transformer_model_name_or_path pretrained_transformer_subfolder
pretrained_unet_model_name_or_path pretrained_unet_subfolder pretrained_vae_model_name_or_path
print_filenames print_sampler_statistics prodigy_steps publishing_config push_to_hub_background
quantization_config quantize_activations quantize_via qwen_text_encoder_model_name_or_path ramtorch
ramtorch_controlnet ramtorch_disable_extensions ramtorch_disable_sync_hooks ramtorch_target_modules
ramtorch_text_encoder ramtorch_text_encoder_percent ramtorch_transformer_percent ramtorch_vae
read_batch_size refiner_training refiner_training_invert_schedule refiner_training_strength
rescale_betas_zero_snr sageattention_usage same_network save_text_encoder
scheduled_sampling_max_step_offset scheduled_sampling_order scheduled_sampling_prob_end
scheduled_sampling_prob_start scheduled_sampling_probability scheduled_sampling_ramp_shape
scheduled_sampling_ramp_steps scheduled_sampling_reflexflow scheduled_sampling_reflexflow_alpha
scheduled_sampling_reflexflow_beta1 scheduled_sampling_reflexflow_beta2 scheduled_sampling_sampler
scheduled_sampling_start_step scheduled_sampling_strategy sdnq_compile_mode sdnq_group_size
sdnq_quantized_matmul_dtype sdnq_use_quantized_matmul sdnq_weights_dtype
sdxl_validation_pipeline_mode sdxl_validation_stage1_model sdxl_validation_stage2_model
seed_for_each_device set_grads_to_none singlora_ramp_up_steps skip_file_discovery sla_config
slider_lora_target snr_weight soft_min_snr_sigma_data strict_epoch_limit t5_padding
text_cache_disable text_cache_ondemand text_embed_full_cache text_encoder_batch_size
text_encoder_limit text_encoder_lr timestep_bias_begin timestep_bias_end timestep_bias_multiplier
timestep_bias_portion timestep_bias_strategy torch_num_threads tracker_image_layout
train_text_encoder training_scheduler_timestep_spacing tread_config trust_remote_code
twinflow_enabled twinflow_target_step_count unet_attention_slice urepa_cutoff_step urepa_decay_steps
urepa_enabled urepa_encoder_image_size urepa_lambda urepa_lambda_end urepa_manifold_weight
urepa_model urepa_power urepa_scheduler urepa_similarity_ema_decay urepa_similarity_threshold
urepa_threshold_mode urepa_use_tae urepa_warmup_steps use_dora use_soft_min_snr user_prompt_library
vae_cache_ondemand vae_cache_scan_behaviour vae_enable_patch_conv vae_enable_slicing
vae_enable_temporal_roll vae_enable_tiling validate_after_epoch validate_after_step
validation_adapter_config validation_adapter_mode validation_adapter_name validation_adapter_path
validation_adapter_strength validation_disable validation_disable_unconditional
validation_epoch_interval validation_external_background validation_external_script
validation_guidance_skip_layers validation_guidance_skip_layers_start
validation_guidance_skip_layers_stop validation_guidance_skip_scale validation_image_format
validation_image_quality validation_input validation_internal_guidance_scale
validation_lycoris_strength validation_method validation_multigpu validation_noise_scheduler
validation_num_video_frames validation_on_startup validation_prompt_library validation_randomize
validation_seed_source validation_stitch_input_location validation_using_datasets variant
wan_validation_load_other_stage webhook_reporting_interval write_batch_size xm_block_size
xm_candidate_count xm_enabled xm_selection_scope xm_training_target
""".split())

# SimpleTuner options that are dataset keys here (multidatabackend.json holds them per dataset).
DATASET_KEYS = frozenset({"instance_prompt", "only_instance_prompt", "prepend_instance_prompt", "max_upscale_threshold",
                          "skip_file_discovery", "metadata_update_interval", "write_batch_size", "caption_strategy",
                          "parquet_filename_column", "disable_bucket_pruning", "ignore_missing_files"})

# (name prefixes or parts, why): the first match wins.
_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("dynamo", "compile", "sdnq"), "torch.compile and its backends are not implemented"),
    (("text_encoder",), "the text encoder is frozen and its embeddings cached (it is never trained or offloaded here)"),
    (("optimizer", "prodigy", "lr_", "fuse_optimizer", "set_grads_to_none"),
     "this optimizer option is not implemented (optimizer adamw or adafactor, see the README)"),
    (("checkpoint",), "only checkpointing_steps, checkpoints_total_limit and resume_from_checkpoint are implemented"),
    (("lora", "lycoris", "lokr", "peft_", "dora", "validation_adapter"),
     "LoRA/LyCORIS adapters are not supported (model_type 'full' only)"),
    (("controlnet", "conditioning", "control_"), "ControlNet and conditioning inputs are not supported"),
    (("flux", "sd3", "sdxl", "sana", "hidream", "ltx", "wan_", "deepfloyd", "kolors", "qwen", "cosmos", "minimax",
      "krea", "auraflow", "lumina", "chroma", "hunyuan", "omnigen", "musubi", "pixart_validation", "gemma",
      "refiner", "t5_", "clip_", "kandinsky", "stable_cascade", "audio", "video", "ace_", "heartmula"),
     "an option of another model family or pipeline stage (only pixart_sigma is supported)"),
    (("quantiz", "precision", "ramtorch", "offload", "fp8", "int8", "nf4", "torchao", "bnb"),
     "quantisation and offloading are not supported"),
    (("deepspeed", "fsdp", "accelerate", "distributed", "context_parallel", "tp_", "main_process"),
     "distributed training here is torchrun DDP via num_processes"),
    (("crepa", "urepa", "irepa", "layersync", "nextlat", "xm_", "internal_guidance", "mixflow", "distill",
      "scheduled_sampling", "diff2flow", "twinflow", "tread", "sana_", "soft_min_snr", "flow_", "timestep",
      "loss", "prediction_type", "noise", "snr", "input_perturbation", "masked"),
     "this training-objective option is not implemented"),
    (("nsfw", "webhook", "disk_low", "post_", "publishing", "modelspec", "push_", "hub_", "model_card"),
     "this integration is not implemented"),
    (("ema",), "only use_ema and ema_decay are implemented"),
    (("validation", "eval", "benchmark"), "this validation/evaluation option is not implemented"),
    (("cache", "text_embed", "vae", "dataloader", "dataset", "data_backend", "caption", "aspect", "resolution",
      "crop", "image"), "this data or cache option is not implemented (datasets are configured in multidatabackend.json)"),
)


def reason(key: str) -> str:
    """Why SimpleTuner's option ``key`` is not accepted here."""
    if key in DATASET_KEYS:
        return "a per-dataset key here: set it on the dataset's entry in multidatabackend.json"
    for parts, why in _REASONS:
        if any(part in key for part in parts):
            return why
    return "this SimpleTuner option is not implemented"


def is_unset(value: Any) -> bool:
    """A value that sets nothing, for any option: ``null``, ``false``, ``""``, ``"false"``, ``"none"``."""
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "none"))
