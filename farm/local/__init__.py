"""The local stack: embedded servers, workers, Flower and the API on one machine; the demo."""
