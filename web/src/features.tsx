import { createContext, useContext } from "react";
import type { Features } from "./api/types";

export const FeaturesContext = createContext<Features>({ clouds: [], features: {} });

export function useFeatures(): Features {
  return useContext(FeaturesContext);
}
