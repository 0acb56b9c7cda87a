"""The assist loop: policy, features, training, evaluation, promotion, prediction, selection."""
