package convert

import (
	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
)

// argsTemplate is the args Namespace of a Clinic (fairseq 0.8) translation run, in the
// order its parser fills it: what an exported checkpoint carries when its source had no
// Namespace (an xform model directory, a fairseq 0.12 checkpoint). The model attributes
// are overwritten from the model config; the rest are the fork's defaults (radam and the
// run's paths left out, so nothing refers to files that are not there).
var argsTemplate = []fairseqpt.Entry{
	{Key: "no_progress_bar", Value: false}, {Key: "log_interval", Value: 1000}, {Key: "log_format", Value: nil},
	{Key: "tensorboard_logdir", Value: ""}, {Key: "tbmf_wrapper", Value: false}, {Key: "seed", Value: 1},
	{Key: "cpu", Value: false}, {Key: "fp16", Value: false}, {Key: "memory_efficient_fp16", Value: false},
	{Key: "fp16_init_scale", Value: 128}, {Key: "fp16_scale_window", Value: nil}, {Key: "fp16_scale_tolerance", Value: 0.0},
	{Key: "min_loss_scale", Value: 0.0001}, {Key: "threshold_loss_scale", Value: nil}, {Key: "user_dir", Value: nil},
	{Key: "empty_cache_freq", Value: 0}, {Key: "criterion", Value: "label_smoothed_cross_entropy"},
	{Key: "tokenizer", Value: nil}, {Key: "bpe", Value: nil}, {Key: "optimizer", Value: "adam"},
	{Key: "lr_scheduler", Value: "inverse_sqrt"}, {Key: "task", Value: "translation"}, {Key: "num_workers", Value: 1},
	{Key: "skip_invalid_size_inputs_valid_test", Value: false}, {Key: "max_tokens", Value: 4096},
	{Key: "max_sentences", Value: nil}, {Key: "required_batch_size_multiple", Value: 8}, {Key: "dataset_impl", Value: nil},
	{Key: "train_subset", Value: "train"}, {Key: "valid_subset", Value: "valid"}, {Key: "validate_interval", Value: 1},
	{Key: "fixed_validation_seed", Value: nil}, {Key: "disable_validation", Value: false},
	{Key: "max_tokens_valid", Value: 4096}, {Key: "max_sentences_valid", Value: nil}, {Key: "curriculum", Value: 0},
	{Key: "distributed_world_size", Value: 1}, {Key: "distributed_rank", Value: 0},
	{Key: "distributed_backend", Value: "nccl"}, {Key: "distributed_init_method", Value: nil},
	{Key: "distributed_port", Value: -1}, {Key: "device_id", Value: 0}, {Key: "distributed_no_spawn", Value: false},
	{Key: "ddp_backend", Value: "c10d"}, {Key: "bucket_cap_mb", Value: 25}, {Key: "fix_batches_to_gpus", Value: false},
	{Key: "find_unused_parameters", Value: false}, {Key: "fast_stat_sync", Value: false},
	{Key: "arch", Value: "transformer"}, {Key: "init_type", Value: "default"}, {Key: "plot_variance", Value: false},
	{Key: "plot_gradient", Value: false}, {Key: "plot_stability", Value: false}, {Key: "gradient_as_delta", Value: false},
	{Key: "mixed_precision", Value: false}, {Key: "max_epoch", Value: 0}, {Key: "max_update", Value: 0},
	{Key: "clip_norm", Value: 25.0}, {Key: "sentence_avg", Value: false},
	{Key: "update_freq", Value: types.NewListFromSlice([]interface{}{1})},
	{Key: "lr", Value: types.NewListFromSlice([]interface{}{0.0005})}, {Key: "min_lr", Value: -1},
	{Key: "use_bmuf", Value: false}, {Key: "save_dir", Value: "checkpoints"}, {Key: "restore_file", Value: "checkpoint_last.pt"},
	{Key: "reset_dataloader", Value: false}, {Key: "reset_lr_scheduler", Value: false}, {Key: "reset_meters", Value: false},
	{Key: "reset_optimizer", Value: false}, {Key: "optimizer_overrides", Value: "{}"}, {Key: "save_interval", Value: 1},
	{Key: "save_interval_updates", Value: 0}, {Key: "keep_interval_updates", Value: -1}, {Key: "keep_last_epochs", Value: -1},
	{Key: "no_save", Value: false}, {Key: "no_epoch_checkpoints", Value: false}, {Key: "no_last_checkpoints", Value: false},
	{Key: "no_save_optimizer_state", Value: false}, {Key: "best_checkpoint_metric", Value: "loss"},
	{Key: "maximize_best_checkpoint_metric", Value: false}, {Key: "no_token_positional_embeddings", Value: false},
	{Key: "no_cross_attention", Value: false}, {Key: "cross_self_attention", Value: false},
	{Key: "layer_wise_attention", Value: false}, {Key: "label_smoothing", Value: 0.1},
	{Key: "adam_betas", Value: "(0.9, 0.98)"}, {Key: "adam_eps", Value: 1e-08}, {Key: "weight_decay", Value: 0.0},
	{Key: "warmup_updates", Value: 4000}, {Key: "warmup_init_lr", Value: 1e-07}, {Key: "data", Value: ""},
	{Key: "source_lang", Value: nil}, {Key: "target_lang", Value: nil}, {Key: "lazy_load", Value: false},
	{Key: "raw_text", Value: false}, {Key: "load_alignments", Value: false}, {Key: "left_pad_source", Value: true},
	{Key: "left_pad_target", Value: false}, {Key: "max_source_positions", Value: 1024},
	{Key: "max_target_positions", Value: 1024}, {Key: "upsample_primary", Value: 1}, {Key: "dropout", Value: 0.1},
	{Key: "attention_dropout", Value: 0.0}, {Key: "activation_dropout", Value: 0.0}, {Key: "encoder_layers", Value: 6},
	{Key: "decoder_layers", Value: 6}, {Key: "encoder_embed_dim", Value: 512}, {Key: "decoder_embed_dim", Value: 512},
	{Key: "encoder_ffn_embed_dim", Value: 2048}, {Key: "decoder_ffn_embed_dim", Value: 2048},
	{Key: "encoder_attention_heads", Value: 8}, {Key: "decoder_attention_heads", Value: 8},
	{Key: "share_all_embeddings", Value: false}, {Key: "encoder_embed_path", Value: nil},
	{Key: "encoder_normalize_before", Value: false}, {Key: "encoder_learned_pos", Value: false},
	{Key: "decoder_embed_path", Value: nil}, {Key: "decoder_normalize_before", Value: false},
	{Key: "decoder_learned_pos", Value: false}, {Key: "activation_fn", Value: "relu"},
	{Key: "adaptive_softmax_cutoff", Value: nil}, {Key: "adaptive_softmax_dropout", Value: 0},
	{Key: "share_decoder_input_output_embed", Value: false}, {Key: "adaptive_input", Value: false},
	{Key: "decoder_output_dim", Value: 512}, {Key: "decoder_input_dim", Value: 512},
}
