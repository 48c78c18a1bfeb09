"""Ab initio 3D reconstruction: cryoAI (amortized) and cryoSPIN (semi-amortized) pose inference."""
