"""Generation: decoding (greedy, beam, sampling), inference over runs, image inputs, caption outputs, heat-maps."""
