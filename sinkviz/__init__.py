"""sinkviz: attention capture and sink analyses for ctrsink runs."""
